"""Safe output: every file memslot-fuzz writes goes through here.

Policy for a file the user names (`run --report`, `show --html`) and for the files the tool
writes under `--out`:

* a new name or an existing regular file is written atomically: a temporary file in the same
  directory (created with mode 0666 & ~umask, as `open()` would, not mkstemp's 0600), flushed
  to disk, then renamed over the name;
* an existing character or block device or FIFO is written through: opened for writing and
  written, never replaced, truncated or unlinked (`--report /dev/null` discards it, `/dev/full`
  reports "no space left on device");
* a symbolic link is refused: it is neither followed nor replaced (name its target instead;
  /dev/stdout is a symlink too);
* anything else (a directory, a socket) is refused.

Every failure is an OutputError whose message is one line naming the option, the path and
what went wrong (no space left, read-only file system, permission denied, ...).  check_file
and prepare_dir run before any work starts, so a bad path costs nothing.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

FILE_MODE = 0o666           # the kernel applies the umask on create


class OutputError(Exception):
    """An output path that cannot be (or must not be) written: one line."""


def _label(path, option: str | None) -> str:
    return f"{option} {path}" if option else str(path)


def _reason(e: OSError) -> str:
    return e.strerror.lower() if e.strerror else (errno.errorcode.get(e.errno or 0) or str(e))


@contextlib.contextmanager
def errors(path, option: str | None = None, doing: str = "cannot write") -> Iterator[None]:
    """Turn an OSError raised inside the block into a one-line OutputError about `path`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"{_label(path, option)}: {doing}: {_reason(e)}") from None


def create_temp(directory, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, Path]:
    """A new file in `directory`, opened for writing, with the umask's mode.
    Returns (fd, path); raises OSError (callers wrap it with `errors`)."""
    directory = Path(directory)
    for _ in range(100):
        path = directory / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
        except FileExistsError:
            continue
        return fd, path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _probe(directory: Path) -> None:
    """Raise OSError unless a file can be created in `directory` (it is removed at once)."""
    fd, tmp = create_temp(directory, prefix=".memslot-fuzz-probe-")
    os.close(fd)
    os.unlink(tmp)


def _is_through(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_kind(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; refusing to follow or replace it (name its target instead)"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not (stat.S_ISREG(st.st_mode) or _is_through(st.st_mode)):
        return "is not a regular file, device or FIFO"
    return None


def check_file(path, option: str | None = None) -> None:
    """Before a run: `path` can be written under the policy above (its directory exists and
    takes new files; a device or FIFO is writable; a symlink or directory is refused)."""
    path = Path(path)
    label = _label(path, option)
    with errors(path, option, "cannot inspect"):
        st = _lstat(path)
    if st is not None:
        why = _refuse_kind(st)
        if why:
            raise OutputError(f"{label}: {why}")
        if _is_through(st.st_mode):
            if not os.access(path, os.W_OK):
                raise OutputError(f"{label}: cannot write: permission denied")
            return
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{label}: directory {parent} does not exist" if not parent.exists()
                          else f"{label}: {parent} is not a directory")
    with errors(path, option, f"cannot create a file in {parent}"):
        _probe(parent)


def prepare_dir(path, option: str | None = None) -> Path:
    """Before a run: create directory `path` if needed and check that it takes new files."""
    path = Path(path)
    label = _label(path, option)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{label}: not a directory")
    with errors(path, option, "cannot create directory"):
        path.mkdir(parents=True, exist_ok=True)
    with errors(path, option, "cannot create a file in it"):
        _probe(path)
    return path


def write_bytes(path, data: bytes, option: str | None = None) -> None:
    """Write `data` to `path` under the policy above; OutputError (one line) on any failure."""
    path = Path(path)
    with errors(path, option, "cannot inspect"):
        st = _lstat(path)
    if st is not None:
        why = _refuse_kind(st)
        if why:
            raise OutputError(f"{_label(path, option)}: {why}")
        if _is_through(st.st_mode):
            with errors(path, option):
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
            return
    with errors(path, option):
        fd, tmp = create_temp(path.parent, prefix=f".{path.name}.tmp-")
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def write_text(path, text: str, option: str | None = None) -> None:
    write_bytes(path, text.encode("utf-8"), option)
