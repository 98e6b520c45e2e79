"""Publish a file under a name nobody else holds: write it completely under a temporary name
in the same directory, then hard-link it into place.  os.link fails if the name exists, so
of several processes publishing the same name exactly one wins, and nobody ever sees a
partial file or has a file replaced.  Files get the mode the umask allows (as open() would).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_new(path: Path, text: str) -> bool:
    """Create `path` holding `text`, unless it exists.  True if this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
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
