"""SIGKILL `lowbit train` at random points: every file left parses, and --resume ends exactly
where an uninterrupted run ends (same metrics.json, same weights).

Deterministic CPU training (one thread, torch's deterministic algorithms, per-epoch seeded
generators) makes "exactly" testable. Kill times are drawn, per seed, uniformly over the part
of the run that writes files (from config.json's appearance to the end).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lowbit.lock import LOCK_FILE

from .files import IMAGE_SIZE, write_image_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TRAIN = ["--image-size", str(IMAGE_SIZE), "--width", "4", "--epochs", "3", "--batch-size", "2"]


def _command(data: Path) -> list[str]:
    return [sys.executable, "-m", "lowbit", "--quiet", "train", "--data", str(data), *TRAIN]


def _start(data: Path, run: Path, *extra: str) -> subprocess.Popen:
    argv = [*_command(data), "--out", str(run), *extra]
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_first_write(process: subprocess.Popen, run: Path) -> None:
    while process.poll() is None and not (run / "config.json").exists():
        time.sleep(0.01)


def check_run_dir(run: Path) -> list[str]:
    """Asserts every artifact in `run` parses; returns the temp files of interrupted writes."""
    temps = []
    for path in sorted(run.iterdir()):
        if path.name == LOCK_FILE:
            continue  # the writer lock: kept, released by the kernel when its holder dies
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temps.append(path.name)  # atomic_write_bytes' temp: never read, removed on resume
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            assert {"model", "optimizer", "epoch"} <= set(checkpoint)
        else:
            raise AssertionError(f"unexpected file {path}")
    return temps


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, float, float]:
    """(data folder, uninterrupted run, seconds from its first write to the end, in all)."""
    root = tmp_path_factory.mktemp("crash")
    data = write_image_folder(root / "data", per_class=8)
    run = root / "straight"
    started = time.monotonic()
    process = _start(data, run)
    _wait_for_first_write(process, run)
    first_write = time.monotonic()
    _, err = process.communicate()
    assert process.returncode == 0, err.decode()
    return data, run, time.monotonic() - first_write, time.monotonic() - started


def _epoch_on_disk(run: Path) -> int | None:
    path = run / "checkpoint.pt"
    return int(torch.load(path, weights_only=True)["epoch"]) if path.is_file() else None


def kill_and_resume(reference, tmp_path: Path, seed: int, kills: int = 2) -> dict:
    """SIGKILLs `kills` runs (a fresh one, then resumes), resumes to the end; returns a log.

    A fresh run is killed a random time after its first write, a resume a random time after
    its start. A run that finished before its kill is deleted and started over, killed sooner.
    """
    data, straight, write_window, total = reference
    rng = random.Random(seed)
    run = tmp_path / f"run{seed}"
    log = {"kills": 0, "epoch_on_disk_at_kill": [], "temp_files_left": 0, "restarts": 0}
    shrink = 1.0
    while log["kills"] < kills:
        assert log["restarts"] < 4 * kills, "every run finished before its kill"
        resume = run.exists()
        process = _start(data, run, *(["--resume"] if resume else []))
        if not resume:
            _wait_for_first_write(process, run)
        time.sleep(rng.uniform(0, total if resume else write_window) * shrink)
        killed = process.poll() is None
        if killed:
            process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
        if run.exists():
            log["temp_files_left"] += len(check_run_dir(run))
        if killed:
            log["kills"] += 1
            log["epoch_on_disk_at_kill"].append(_epoch_on_disk(run))
        else:
            shutil.rmtree(run)
            log["restarts"] += 1
            shrink /= 2
    result = subprocess.run(
        [*_command(data), "--out", str(run), "--resume"], env=ENV, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()
    assert check_run_dir(run) == []  # resume removed every interrupted write
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads((straight / "metrics.json").read_text())
    weights = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    expected = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)
    return log


def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path):
    log = kill_and_resume(reference, tmp_path, seed=0, kills=1)
    print(f"seed 0: {log}")  # pytest -s shows what each seed survived


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
def test_sigkill_then_resume_many_seeds(reference, tmp_path, seed):
    log = kill_and_resume(reference, tmp_path, seed=seed, kills=3)
    print(f"seed {seed}: {log}")


def test_resume_removes_the_temp_file_of_a_killed_write(env, tmp_path):
    """A kill between mkstemp and rename leaves `.checkpoint.pt.<random>.tmp`, half written."""
    from lowbit.cli import main

    from .cases import TRAIN as ONE_EPOCH

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint.pt", "metrics.json"):
        shutil.copy(env.run / name, run / name)
    half = (env.run / "checkpoint.pt").read_bytes()[:1000]
    (run / ".checkpoint.pt.k1ll3d.tmp").write_bytes(half)
    (run / "metrics.json").unlink()
    argv = ["train", "--data", str(env.folder), *ONE_EPOCH, "--out", str(run), "--resume"]
    assert main(["--quiet", *argv]) == 0
    assert check_run_dir(run) == []
    assert (run / "metrics.json").read_text() == (env.run / "metrics.json").read_text()
