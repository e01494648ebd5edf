"""``python -m agency`` is the ``ateams`` command."""
from agency.cli import app

app()
