"""``python -m shipway`` is the ``shipway`` command."""

from shipway.cli import main

main()
