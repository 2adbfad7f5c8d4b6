"""What lowbit writes: full disks, bad output paths, file modes, exports as a set, one writer.

The tests run as root, whom permission bits do not stop, so failures are injected: os.write
raising ENOSPC for one named file, os.open and os.mkdir raising EROFS or EACCES under one
folder. One test drops to user nobody for a real permission check; a slow one fills a real
tmpfs. Every failure must end in one stderr line with the exit code of its class, no temp file
or staging folder left, and the previous run or export unchanged and still valid.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lowbit.artifacts import GRAPH_FILES, MANIFEST_FILE, STATS_FILE
from lowbit.cli import main
from lowbit.errors import BusyError, ModelFileError, WriteError
from lowbit.io import STAGING_PREFIX
from lowbit.lock import LOCK_FILE
from lowbit.manifest import check_export
from lowbit.train.checkpoint import load_checkpoint

from .files import CLASSES, IMAGE_SIZE

TRAIN = ["--image-size", str(IMAGE_SIZE), "--width", "4", "--batch-size", "4"]
NO_SPACE = "cannot write: no space left on the device; free space or write elsewhere"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (temp files and staging folders included) but the lock."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


def _image(env) -> str:
    return str(sorted((env.folder / CLASSES[0]).iterdir())[0])


@pytest.fixture
def run_copy(env, tmp_path) -> Path:
    """A private copy of the trained run and the sealed export it holds."""
    return Path(shutil.copytree(env.run, tmp_path / "run"))


@pytest.fixture
def fail_write(monkeypatch):
    """fail_write(name, code, after=k): os.write raises for the (k+1)-th and later files whose
    name contains `name` (a temp file `.NAME.xxxx.tmp` or a staged `NAME`)."""

    def inject(name: str, code: int = errno.ENOSPC, after: int = 0) -> None:
        real, files = os.write, set()

        def write(fd, data):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if name in os.path.basename(target):
                files.add(target)
                if len(files) > after:
                    raise OSError(code, os.strerror(code))
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)

    return inject


@pytest.fixture
def fail_under(monkeypatch):
    """fail_under(folder, code): creating anything in `folder` fails, as on a read-only
    folder (EACCES for a non-root user, EROFS on a read-only mount)."""

    def inject(folder: Path, code: int) -> None:
        real_open, real_mkdir = os.open, os.mkdir
        creating = os.O_CREAT | os.O_WRONLY | os.O_RDWR

        def inside(path) -> bool:
            return Path(os.path.abspath(path)).is_relative_to(folder)

        def fake_open(path, flags, *args, **kwargs):
            if flags & creating and inside(path):
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if inside(path) and not os.path.isdir(path):
                raise OSError(code, os.strerror(code), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return inject


# ----- a full disk at each write point ---------------------------------------------------------

EXPORT_WRITES = [*GRAPH_FILES.values(), STATS_FILE, "model.json", MANIFEST_FILE]


@pytest.mark.parametrize("name", EXPORT_WRITES)
def test_full_disk_at_each_export_write_keeps_the_previous_export(
    run_copy, fail_write, capsys, name
):
    before = _files(run_copy)
    fail_write(name)
    # a feature score: the export also writes the statistics file
    code = main(["--quiet", "export", str(run_copy), "--ood-score", "prototype"])
    assert code == WriteError.exit_code
    assert _one_line(capsys) == f"lowbit: error: {run_copy / name}: {NO_SPACE}"
    assert _files(run_copy) == before  # nothing replaced, no temp file, no staging folder
    check_export(run_copy)


def test_previous_export_still_verifies_after_a_full_disk(run_copy, fail_write, monkeypatch):
    fail_write("model.int.onnx")
    assert main(["--quiet", "export", str(run_copy), "--ood-score", "prototype"]) == 8
    monkeypatch.undo()
    argv = ["--quiet", "verify", str(run_copy), "--n", "0", "--random", "4", "--no-ties"]
    assert main(argv) == 0


@pytest.mark.parametrize(
    ("name", "after", "epoch_on_disk"),
    [("config.json", 0, None), ("checkpoint.pt", 1, 1), ("metrics.json", 0, 2)],
)
def test_full_disk_during_training_keeps_the_last_checkpoint(
    env, tmp_path, fail_write, monkeypatch, capsys, name, after, epoch_on_disk
):
    run = tmp_path / "run"
    argv = ["--quiet", "train", "--data", str(env.folder), *TRAIN, "--epochs", "2"]
    fail_write(name, after=after)
    assert main([*argv, "--out", str(run)]) == WriteError.exit_code
    assert _one_line(capsys) == f"lowbit: error: {run / name}: {NO_SPACE}"
    assert not [path for path in run.iterdir() if path.name.endswith(".tmp")]
    if epoch_on_disk is None:
        assert not (run / "checkpoint.pt").exists()
    else:
        assert load_checkpoint(run / "checkpoint.pt")["epoch"] == epoch_on_disk
    monkeypatch.undo()  # space again: the run resumes from what it kept
    assert main([*argv, "--out", str(run), "--resume"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    assert (run / "metrics.json").is_file()


# ----- bad output paths --------------------------------------------------------------------------


def test_output_below_a_file(run_copy, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "export"
    assert main(["--quiet", "export", str(run_copy), "--out", str(out)]) == 8
    line = _one_line(capsys)
    assert line == (
        f"lowbit: error: {out}: cannot write: a parent of this path is a file, not a folder; "
        "choose another path"
    )


def test_output_that_is_a_file(run_copy, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["--quiet", "export", str(run_copy), "--out", str(tmp_path / "a_file")]) == 8
    assert "a_file: cannot write: exists and is not a folder" in _one_line(capsys)


def test_output_name_too_long(env, tmp_path, capsys):
    out = tmp_path / ("n" * 300)
    argv = ["--quiet", "train", "--data", str(env.folder), *TRAIN, "--epochs", "1"]
    assert main([*argv, "--out", str(out)]) == 8
    assert f"{out}: cannot write: file name too long; choose a shorter path" in _one_line(capsys)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")],
)
def test_read_only_folders(env, run_copy, tmp_path, fail_under, capsys, code, reason):
    locked = tmp_path / "locked"
    locked.mkdir()
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    fail_under(locked, code)
    commands = {
        locked / "y.npz": ["infer", str(env.model), str(x), "--out", str(locked / "y.npz")],
        locked: ["export", str(run_copy), "--out", str(locked)],
        locked / "run": ["train", "--data", str(env.folder), *TRAIN, "--out", str(locked / "run")],
    }
    for path, argv in commands.items():
        assert main(["--quiet", *argv]) == WriteError.exit_code
        assert f"lowbit: error: {path}: cannot write: {reason}" in _one_line(capsys)
    assert list(locked.iterdir()) == []


def test_a_folder_that_user_nobody_may_not_write(env):
    """A real permission check: `lowbit infer` as user nobody into a root-owned 0555 folder."""
    root = Path(tempfile.mkdtemp(prefix="lowbit-perm-"))
    try:
        root.chmod(0o755)
        shutil.copy(env.model, root / "m.onnx")
        np.save(root / "x.npy", np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
        (root / "locked").mkdir(mode=0o555)
        (root / "locked").chmod(0o555)
        # imports first: nobody may not read the interpreter's files under /root
        drop = "os.setgid(65534); os.setuid(65534)" if os.geteuid() == 0 else "pass"
        probe = (
            "import os, sys, zipfile; import lowbit.cli, lowbit.infer, lowbit.runtime; "
            f"{drop}; sys.exit(lowbit.cli.main(sys.argv[1:]))"
        )
        out = root / "locked" / "y.npz"
        argv = ["--quiet", "infer", str(root / "m.onnx"), str(root / "x.npy"), "--out", str(out)]
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=root
        )
        assert result.returncode == WriteError.exit_code, result.stderr
        assert result.stderr == f"lowbit: error: {out}: cannot write: permission denied; " + (
            "write into a folder you may write to\n"
        )
        assert list((root / "locked").iterdir()) == []
    finally:
        shutil.rmtree(root)


# ----- modes --------------------------------------------------------------------------------------


def test_exported_files_are_readable_by_group_and_others(run_copy, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "export"
        argv = ["--quiet", "export", str(run_copy), "--out", str(out), "--target", "c"]
        assert main(argv) == 0
    finally:
        os.umask(previous)
    paths = sorted(out.rglob("*"))
    assert {path.relative_to(out).as_posix() for path in paths} >= {
        *GRAPH_FILES.values(),
        "model.json",
        MANIFEST_FILE,
        "c",
        "c/lowbit_model.h",
        "c/lowbit_model.c",
    }
    for path in [out, *paths]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


# ----- the export as a set -----------------------------------------------------------------------


def test_an_interrupted_publication_is_refused_until_exported_again(
    env, run_copy, monkeypatch, capsys
):
    """os.replace fails after model.json moved in: the folder mixes two exports, and says so."""
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target) == run_copy / GRAPH_FILES["int"]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    argv = ["--quiet", "export", str(run_copy), "--ood-score", "max_logit"]  # a new model.json
    assert main(argv) == WriteError.exit_code
    assert "model.int.onnx: cannot write: input/output error" in _one_line(capsys)
    monkeypatch.undo()
    assert not list(run_copy.glob(".lowbit-staging.*"))
    assert main(["--quiet", "predict", str(run_copy), _image(env)]) == ModelFileError.exit_code
    assert "model.json: sha256 differs from model.manifest.json" in _one_line(capsys)
    assert main(argv) == 0
    assert main(["--quiet", "predict", str(run_copy), _image(env)]) == 0


def test_an_export_removes_only_the_staging_folders_a_killed_export_left(run_copy, tmp_path):
    out = tmp_path / "shared"
    (out / f"{STAGING_PREFIX}k1ll3d").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}k1ll3d" / "model.json").write_text("{")
    (out / ".notes.tmp").write_text("not lowbit's")
    assert main(["--quiet", "export", str(run_copy), "--out", str(out)]) == 0
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    assert (out / ".notes.tmp").read_text() == "not lowbit's"
    check_export(out)


def test_an_export_without_manifest_is_read_with_a_warning(env, run_copy, caplog):
    """Written before manifests: no manifest, and a model.json that names none."""
    (run_copy / MANIFEST_FILE).unlink()
    description = json.loads((run_copy / "model.json").read_text())
    del description["manifest"]
    (run_copy / "model.json").write_text(json.dumps(description))
    # without --quiet, which shows results and errors only
    assert main(["predict", str(run_copy), _image(env)]) == 0
    warning = f"{run_copy}: no {MANIFEST_FILE} (written by an older lowbit)"
    assert any(warning in record.getMessage() for record in caplog.records)


# ----- one writer per folder ---------------------------------------------------------------------

HOLDER = """
import sys
from lowbit.lock import writer_lock

with writer_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def _hold(folder: Path) -> subprocess.Popen:
    """A process holding `folder`'s writer lock until its stdin closes (or it is killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_writers_are_refused_and_readers_served_while_a_folder_is_held(env, run_copy, capsys):
    x = run_copy.parent / "x.npy"
    np.save(x, np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    writers = [
        ["export", str(run_copy)],
        ["train", "--data", str(env.folder), *TRAIN, "--out", str(run_copy)],
        ["enroll", str(run_copy), "--class", "new", "--images", _image(env)],
    ]
    readers = [
        ["predict", str(run_copy), _image(env)],
        ["infer", str(run_copy), str(x), "--out", str(run_copy.parent / "y.npz")],
    ]
    holder = _hold(run_copy)
    try:
        before = _files(run_copy)
        for argv in writers:
            assert main(["--quiet", *argv]) == BusyError.exit_code
            assert _one_line(capsys) == (
                f"lowbit: error: {run_copy} is in use by process {holder.pid}: one writer at "
                "a time; wait for it to finish or choose another folder"
            )
        assert _files(run_copy) == before
        for argv in readers:
            assert main(["--quiet", *argv]) == 0
    finally:
        holder.kill()
        holder.wait()
    assert main(["--quiet", *writers[0]]) == 0  # the kernel dropped the killed holder's lock


def test_bench_takes_its_folder(tmp_path, capsys):
    holder = _hold(tmp_path / "bench")
    try:
        argv = ["--quiet", "bench", "--quick", "--out", str(tmp_path / "bench")]
        assert main(argv) == BusyError.exit_code
        assert f"is in use by process {holder.pid}" in _one_line(capsys)
    finally:
        holder.kill()
        holder.wait()


def test_two_trainings_into_one_folder(env, tmp_path, capsys):
    """`lowbit train` A holds the folder; B exits 9 without writing; after SIGKILL of A, the
    next writer proceeds."""
    run = tmp_path / "run"
    argv = ["train", "--data", str(env.folder), *TRAIN]
    first = subprocess.Popen(
        [sys.executable, "-m", "lowbit", "--quiet", *argv, "--epochs", "100000", "--out", str(run)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        lock = run / LOCK_FILE
        while first.poll() is None and not (lock.is_file() and lock.read_text().strip()):
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()
        assert lock.read_text() == f"{first.pid}\n"
        assert main(["--quiet", *argv, "--epochs", "1", "--out", str(run)]) == 9
        assert f"{run} is in use by process {first.pid}" in _one_line(capsys)
        assert first.poll() is None  # the first one still runs
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
    assert main(["--quiet", *argv, "--epochs", "1", "--out", str(run)]) == 0
    assert (run / "metrics.json").is_file()


# ----- a real full disk --------------------------------------------------------------------


@pytest.mark.slow
def test_export_into_a_full_tmpfs(run_copy, tmp_path, capsys):
    """The reported case: an export into a small tmpfs. Needs mount rights (root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    sizes = [path.stat().st_size for path in run_copy.iterdir() if path.name.startswith("model.")]
    pages = sum(-(-size // 4096) for size in sizes)  # tmpfs stores whole 4 KiB pages
    # room for one export and a half: a second export must stage beside the first and fails
    mount = ["mount", "-t", "tmpfs", "-o", f"size={(pages * 3 // 2 + 1) * 4}k", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "export"
        assert main(["--quiet", "export", str(run_copy), "--out", str(out)]) == 0
        before = _files(out)
        argv = ["--quiet", "export", str(run_copy), "--out", str(out), "--ood-score", "energy"]
        assert main(argv) == WriteError.exit_code
        line = _one_line(capsys)
        assert line.startswith(f"lowbit: error: {out}/") and line.endswith(NO_SPACE), line
        assert _files(out) == before
        check_export(out)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
