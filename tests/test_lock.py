"""One writer per folder: a second process is refused with the holder's id; a killed holder's
lock is gone; nested locks in one process are one lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lowbit.errors import BusyError
from lowbit.lock import LOCK_FILE, writer_lock

HOLDER = """
import sys
from lowbit.lock import writer_lock

with writer_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(folder) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "held\n"
    return process


def test_a_second_process_is_refused_until_the_holder_dies(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        with pytest.raises(BusyError, match=f"run is in use by process {holder.pid}: one writer"):
            with writer_lock(folder):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        holder.wait()
    with writer_lock(folder):
        assert (folder / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert (folder / LOCK_FILE).is_file()  # never deleted: see lowbit/lock.py


def test_nested_locks_of_one_folder_are_one_lock(tmp_path):
    with writer_lock(tmp_path / "run"):
        with writer_lock(tmp_path / "run"):
            pass
        holder = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path / "run")],
            input="",
            capture_output=True,
            text=True,
        )
        assert "in use by process" in holder.stderr  # still held after the inner block
    holder = _holder(tmp_path / "run")  # released after the outer one
    holder.stdin.close()
    assert holder.wait() == 0


def test_the_lock_file_has_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        with writer_lock(tmp_path / "run"):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / "run" / LOCK_FILE).stat().st_mode & 0o777 == 0o644
