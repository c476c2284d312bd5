"""``python -m actlab`` is the ``actlab`` command."""

from actlab.cli.main import app

app()
