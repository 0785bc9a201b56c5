"""Atomic file writes shared by every room that writes files that must not be lost."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def _umask_now() -> int | None:
    """The process's umask, read without changing it (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _umask_at_import() -> int:
    mask = _umask_now()
    if mask is None:  # set and restored once, before any thread of ours writes
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0o644 under the
    usual 022; off Linux, the umask at import). ``mkstemp`` makes its files 0o600, which
    the rename kept: another user's reader (an analyst, a labeler) got PermissionError
    on every shard."""
    mask = _umask_now()
    return 0o666 & ~(_UMASK_AT_IMPORT if mask is None else mask)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_file(fd: int) -> bool:
    """An exclusive ``flock`` on ``fd``, waiting for it (released when the process dies):
    True if taken, False where there is no ``fcntl`` (Windows) or the file system refuses
    locks."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def locked_by_another(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` unless another process holds one: True when
    one does (nothing taken); False once taken, or where locks are not supported (then
    no lock tells anything)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` that lasts: each folder it makes is fsynced into its parent, or a power
    loss could take a new folder away with the files already fsynced inside it."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            d.mkdir()
        fsync_dir(d.parent)
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` via a temp file in the same directory: write, flush, fsync, rename.

    A reader sees either the old file or the complete new one, never a partial file.
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # it names the temp file: name the file being written
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            locked = lock_file(f.fileno())
            if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
                # (a file system without modes, e.g. vfat, refuses: the write goes on)
                with contextlib.suppress(OSError):
                    os.fchmod(f.fileno(), new_file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if locked:  # renamed while locked: a locked temp file is a live writer's
                os.replace(tmp, path)
        if not locked:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return atomic_write_bytes(path, data)
