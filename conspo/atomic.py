"""Atomic file writes: a reader (or a resumed run) sees either the old file or the whole new one, never a torn one.

The text goes to a temporary file in the same folder (same filesystem), is flushed to disk, then `os.replace`d onto
the target; a failure removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, creating the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data, *, sort_keys: bool = False) -> None:
    """Write `data` as indented JSON (with a final newline) to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
