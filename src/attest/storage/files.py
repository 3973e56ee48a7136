"""State on disk: atomic, durable small-file writes and bounded reads (an adapter).

``atomic_write_bytes`` writes a temporary file in the target's directory, fsyncs it, renames it
over the target and fsyncs the directory, so after a crash the path holds either the old or the
new content, never a mix. Used by the manifest trusted state, the daemon and the upgrade gate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

DEFAULT_MAX_READ = 16 * 1024 * 1024


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    target = Path(path)
    directory = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except FileNotFoundError:  # name the file asked for, not the temporary one
        raise FileNotFoundError(
            errno.ENOENT, f"its directory {directory} does not exist", str(target)
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_bytes(path: str | os.PathLike[str], *, max_size: int = DEFAULT_MAX_READ) -> bytes:
    """Read a whole file, refusing (``OSError(EFBIG)``) anything larger than ``max_size``: a
    hostile file cannot make us allocate more than the limit."""
    with Path(path).open("rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise OSError(27, f"file larger than {max_size} bytes", str(path))  # EFBIG
    return data


def read_optional(
    path: str | os.PathLike[str], *, max_size: int = DEFAULT_MAX_READ
) -> bytes | None:
    """Like ``read_bytes``, but ``None`` when the file does not exist."""
    try:
        return read_bytes(path, max_size=max_size)
    except FileNotFoundError:
        return None
