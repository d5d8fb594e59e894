"""Batch jobs: OpenAI's Files and Batches API, run at the lowest priority.

    file_routes.py   /v1/files: multipart upload (upload.py), list, retrieve, content, delete
    batch_routes.py  /v1/batches: create (input checked by lines.py), retrieve, list, cancel
    runner.py        leases pending lines, runs them when their model is idle, moves batches
                     on; finalize.py writes the output and error files
    executor.py      one line, through the same route code and pipeline as a live request
    owners.py        the principal a batch runs as; who holds a line's lease
    views.py         files, batches and output lines in OpenAI's shapes
    service.py       ``BatchService``: all of it, built from the shared services

The state lives in the store (store/batches.py, store/batch_files.py): a restart resumes
every running batch, and each line is answered exactly once.
"""

from __future__ import annotations

from shipway.batches.service import BatchService

__all__ = ["BatchService"]
