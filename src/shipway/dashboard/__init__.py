"""The web dashboard (``/dashboard``) and ``shipway stats``: one summary document, two views.

``buckets.py``, ``series.py`` and ``summary.py`` build the document from ``telemetry.recent``
(pure functions and a cache of merged buckets), ``routes.py`` serves it and the static page,
``stats_client.py`` fetches it and ``stats_view.py`` prints it in a terminal.
"""
