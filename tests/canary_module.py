"""Importing this module writes a file: tests prove sisy never imports it from a job row."""

import tempfile
from pathlib import Path

Path(tempfile.gettempdir(), "sisy-canary-imported").write_text("imported")
