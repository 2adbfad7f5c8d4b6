"""File writes that leave the old file or the whole new one, and one-line errors when they fail.

A file is written to a temp file in its own folder, fsynced and renamed over the target. The
temp file is created with mode 0666 and the kernel applies the umask, so an artifact gets the
mode any other new file gets (0644 under umask 022): mkstemp's private 0600 would survive the
rename and lock out a toolchain, web server or container running as another user.

An OSError on the way (ENOSPC, EACCES, EROFS, ENOTDIR, ENAMETOOLONG, ...) becomes a WriteError
that names the target and says what to do; the temp file is removed and the target is unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lowbit.errors import WriteError

TEMP_SUFFIX = ".tmp"
STAGING_PREFIX = ".lowbit-staging."  # a folder of files published together (lowbit.manifest)

# errno -> (what happened, what to do), for the one line the CLI prints
_REASONS = {
    errno.ENOSPC: ("no space left on the device", "free space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space or write elsewhere"),
    errno.EACCES: ("permission denied", "write into a folder you may write to"),
    errno.EPERM: ("operation not permitted", "write into a folder you may write to"),
    errno.EROFS: ("read-only file system", "write elsewhere"),
    errno.ENOTDIR: ("a parent of this path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("is a folder", "remove it or give a file path"),
    errno.EEXIST: ("exists and is not a folder", "remove it or choose another path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "choose another path"),
    errno.EIO: ("input/output error", "check the device"),
}


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """Returns the WriteError for `error`, met while writing `path`."""
    what, todo = _REASONS.get(
        error.errno, (error.strerror or type(error).__name__, "check the path and the device")
    )
    return WriteError(Path(path), f"{what}; {todo}")


def named_in(error: WriteError, staging: Path, destination: Path) -> WriteError:
    """Returns `error` naming a file of `staging` by its place in `destination`: the staging
    folder is gone by the time the user reads the message."""
    path = Path(error.path)
    if not path.is_relative_to(staging):
        return error
    return WriteError(destination / path.relative_to(staging), error.reason)


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turns an OSError raised inside the block into a WriteError naming `path`."""
    try:
        yield
    except OSError as error:
        raise write_error(path, error) from None


def make_dir(path: str | os.PathLike) -> Path:
    """Creates folder `path` and its parents (mode from the umask); returns it."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes the renames inside folder `path` durable (a no-op where folders cannot be synced)."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create(path: Path) -> int:
    # 0o666 & ~umask, like open(path, "w"); O_EXCL: never write through a planted file or link
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def write_new_file(path: str | os.PathLike, data: bytes) -> Path:
    """Creates `path` (which must not exist), writes `data` and fsyncs it; for staging folders,
    whose files nobody reads before they are complete. A failed write removes the file."""
    path = Path(path)
    make_dir(path.parent)
    with writing(path):
        fd = _create(path)
        try:
            _write_and_close(fd, data)
        except BaseException:
            with suppress(OSError):
                path.unlink()
            raise
    return path


def _write_and_close(fd: int, data: bytes) -> None:
    """Writes all of `data` to `fd`, fsyncs and closes it (closed on failure too)."""
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    # the target's name is cut so that the temp name stays within NAME_MAX (255 bytes)
    return path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    make_dir(path.parent)
    with writing(path):
        while True:
            temp = _temp_path(path)
            try:
                fd = _create(temp)
                break
            except FileExistsError:  # 2^-32 per try: another writer's temp file
                continue
        try:
            _write_and_close(fd, data)
            os.replace(temp, path)
        except BaseException:
            with suppress(OSError):
                temp.unlink()
            raise
    return path


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temp files and staging folders that a killed writer left in `folder`;
    returns them.

    Only a process killed between creating and renaming them (SIGKILL, power loss) leaves one;
    the files they were to replace are then still the old, whole versions. Call it while
    holding the folder's writer lock (lowbit.lock): another writer's temp files are not stale.
    """
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return sorted(stale + remove_stale_staging(folder))


def remove_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Deletes the staging folders (lowbit.manifest.staged) a killed writer left in `folder`;
    returns them. Unlike remove_stale_temps, safe in a folder that is not lowbit's alone (an
    export's --out): only names lowbit gives are touched. Call it under the writer lock."""
    folder = Path(folder)
    stale = sorted(folder.glob(f"{STAGING_PREFIX}*")) if folder.is_dir() else []
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def json_bytes(payload: object) -> bytes:
    """Returns `payload` as indented JSON text (numpy arrays and scalars as lists and numbers)."""
    return (json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, payload: object) -> Path:
    """Writes `payload` as indented JSON, atomically."""
    return atomic_write_bytes(path, json_bytes(payload))


def _jsonable(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
