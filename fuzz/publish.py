"""Publish a file under a name nobody else holds: write it completely under a temporary name
in the same directory, then hard-link it into place.  os.link fails if the name exists, so
of several processes publishing the same name exactly one wins, and nobody ever sees a
partial file or has a file replaced.  Files get the mode the umask allows (as open() would).
"""
from __future__ import annotations

import os
from pathlib import Path

from fuzz import output


def publish_new(path: Path, text: str) -> bool:
    """Create `path` holding `text`, unless it exists.  True if this call created it.
    A failure (disk full, read-only directory) is one OutputError line naming the path."""
    path = Path(path)
    with output.errors(path, None, "cannot save"):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return False
        fd, tmp = output.create_temp(path.parent, suffix=path.suffix)    # the umask's mode
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
