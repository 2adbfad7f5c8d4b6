"""One writer per folder: `writer_lock(folder)` holds an exclusive flock on folder/.lowbit.lock.

train (and resume), export, enroll and bench hold it on the folder they write; a second writer
gets BusyError ("... is in use by process N") before it writes anything. Readers take no lock:
every file is replaced atomically and an export is checked against its manifest.

flock belongs to the open file, and the kernel drops it when the holder exits however it exits
(SIGKILL included), so a killed run never leaves a stale lock. The lock file itself stays: a
deleted lock file could be locked by one process through its old inode and by another through a
new one. Its content, the holder's process id, only serves the message.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lowbit.errors import BusyError
from lowbit.io import make_dir, write_error, writing

log = logging.getLogger(__name__)

LOCK_FILE = ".lowbit.lock"
_HELD: dict[str, int] = {}  # real path of a folder locked by this process -> nesting depth


def _holder(fd: int) -> str:
    with suppress(OSError, UnicodeDecodeError):
        pid = os.pread(fd, 32, 0).decode().strip()
        if pid.isdigit():
            return f"process {pid}"
    return "another process"  # it has the lock but has not written its id yet


@contextmanager
def writer_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Holds `folder`'s writer lock for the block (creating the folder); BusyError when another
    process holds it. Nested locks of one folder in one process are one lock (a train inside a
    bench, an export inside a pipeline)."""
    folder = make_dir(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    with writing(folder):
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"{folder} is in use by {_holder(fd)}: one writer at a time; wait for it to "
                "finish or choose another folder"
            ) from None
        except OSError as error:  # a file system without locks: write as before, unguarded
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise write_error(folder / LOCK_FILE, error) from None
            log.warning("%s: cannot lock (%s); not guarded against a second writer", folder, error)
        with suppress(OSError):  # a full disk may refuse the id; the lock is held all the same
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield folder
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the flock
