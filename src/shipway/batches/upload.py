"""Reading a ``multipart/form-data`` file upload: streamed to a spooled temporary file as it
arrives (memory up to 1 MiB, then an unnamed file on disk), read into memory once to be
stored, and gone with the request if the upload is aborted or refused.

The size is capped twice: the request middleware refuses a body over the cap it is given for
``/v1/files`` (``batches.max_file_bytes`` plus room for the form's own fields) by its declared
length or as it arrives, and the file part itself is checked here against
``batches.max_file_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from shipway.errors import (
    ClientClosedRequest,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

__all__ = ["FORM_OVERHEAD_BYTES", "Upload", "read_upload"]

# Room for the multipart boundaries, part headers and the small fields beside the file.
FORM_OVERHEAD_BYTES = 64 * 1024
_MAX_FIELD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    purpose: str
    content: bytes


async def read_upload(request: Request, max_file_bytes: int) -> Upload:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "upload the file as multipart/form-data with the fields `file` and `purpose`, "
            f"not {content_type or 'no Content-Type'!r}"
        )
    try:
        async with request.form(max_files=1, max_fields=8, max_part_size=_MAX_FIELD_BYTES) as form:
            file, purpose = form.get("file"), form.get("purpose")
            if not isinstance(file, UploadFile):
                raise InvalidRequest("the form has no `file` part", param="file")
            if not isinstance(purpose, str) or not purpose:
                raise InvalidRequest("the form has no `purpose` field", param="purpose")
            if purpose != "batch":
                raise InvalidRequest(
                    f"purpose {purpose!r} is not supported here; files are for batch jobs "
                    "(purpose `batch`)",
                    param="purpose",
                )
            if file.size is not None and file.size > max_file_bytes:
                raise _too_large(max_file_bytes)
            content = await file.read()
            if len(content) > max_file_bytes:
                raise _too_large(max_file_bytes)
            return Upload(file.filename or "file", purpose, content)
    except ClientDisconnect:
        if request.scope["state"].get("shipway.body_timeout"):
            raise RequestTimeout("the upload did not arrive in time") from None
        raise ClientClosedRequest("the client closed the connection while uploading") from None
    except HTTPException as exc:  # Starlette's word for a malformed form
        raise InvalidRequest(f"the multipart form cannot be read: {exc.detail}") from None


def _too_large(max_file_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the file is larger than the {max_file_bytes}-byte limit (batches.max_file_bytes)"
    )
