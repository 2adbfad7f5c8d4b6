"""Atomic writes: modes from the umask, one-line errors, nothing left behind on failure."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from lowbit.errors import WriteError
from lowbit.io import (
    STAGING_PREFIX,
    atomic_write_bytes,
    make_dir,
    remove_stale_temps,
    write_error,
    write_new_file,
)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_and_folders_get_the_mode_of_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "sub" / "a.bin", b"a")
        write_new_file(tmp_path / "b.bin", b"b")
    finally:
        os.umask(previous)
    assert (tmp_path / "sub" / "a.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOSPC, "no space left on the device; free space or write elsewhere"),
        (errno.EACCES, "permission denied; write into a folder you may write to"),
        (errno.EROFS, "read-only file system; write elsewhere"),
        (errno.ENOTDIR, "a parent of this path is a file, not a folder; choose another path"),
        (errno.EISDIR, "is a folder; remove it or give a file path"),
        (errno.ENAMETOOLONG, "file name too long; choose a shorter path"),
        (errno.EEXIST, "exists and is not a folder; remove it or choose another path"),
        (errno.ENXIO, "No such device or address; check the path and the device"),
    ],
)
def test_write_errors_say_what_and_what_to_do(code, text):
    error = write_error("out/model.json", OSError(code, os.strerror(code)))
    assert str(error) == f"out/model.json: cannot write: {text}"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # crosses process boundaries


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = atomic_write_bytes(tmp_path / "model.json", b"old")
    real = os.replace

    def full(source, destination):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match="model.json: cannot write: no space left"):
        atomic_write_bytes(target, b"new")
    monkeypatch.setattr(os, "replace", real)
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["model.json"]


def test_a_long_name_still_fits_its_temp_file(tmp_path):
    name = "m" * 250  # NAME_MAX is 255: the temp name cuts the target's
    assert atomic_write_bytes(tmp_path / name, b"x").read_bytes() == b"x"


def test_a_file_in_the_way_of_a_folder(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(WriteError, match="taken: cannot write: exists and is not a folder"):
        make_dir(tmp_path / "taken")
    with pytest.raises(WriteError, match="taken/deeper: cannot write: a parent of this path is a"):
        atomic_write_bytes(tmp_path / "taken" / "deeper" / "x.json", b"{}")


def test_stale_temps_and_staging_folders_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half")
    (tmp_path / f"{STAGING_PREFIX}k1ll3d").mkdir()
    (tmp_path / f"{STAGING_PREFIX}k1ll3d" / "model.json").write_text("{")
    (tmp_path / "checkpoint.pt").write_bytes(b"whole")
    removed = remove_stale_temps(tmp_path)
    assert len(removed) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]
