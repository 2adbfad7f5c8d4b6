"""Two training processes on the CPU (gloo) against one: same result, identical replicas.

One launch of 2 processes (the costly part: each imports torch) trains both runs of RUNS; the
tests read what the processes recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit.train.checkpoint
import lowbit.train.run
from lowbit.cli import main
from lowbit.errors import ConfigError, DataError
from lowbit.lock import LOCK_FILE
from lowbit.quant.layers import ACT_STATS_STEPS
from lowbit.train import distributed as dist_module
from lowbit.train import load_run, train
from lowbit.train.checkpoint import load_checkpoint, runtime_stats_state
from lowbit.train.distributed import World, launch
from lowbit.train.parallel import train_parallel
from lowbit.train.replicas import replica_state

from .conftest import make_splits, tiny_config

EPOCHS = 4
# 36 images, global batch 4 (2 per process): 9 steps an epoch, 36 in all, so the runs cross the
# end of the activation-statistics phase (ACT_STATS_STEPS = 30) and train the scales after it.
RUNS = {
    "w8a8": tiny_config(
        recipe="w8a8", recipe_overrides={"pow2_scales": False}, batch_size=4, epochs=EPOCHS
    ),  # compared with 1 process
    "w1a2": tiny_config(recipe="w1a2", batch_size=4, epochs=EPOCHS),  # replicas and files only
}
# Two processes compute the same sums as one in another order (DDP's gradient average, BatchNorm
# statistics from per-process partial sums): float32 rounding, ~1e-7 relative per step, which
# quantized training amplifies a little each time a rounding decision flips. Measured on w8a8
# with float scales after 36 steps: max |difference| 2.8e-4 (an activation scale, after 27 steps
# 1e-5), and 2.4e-4 between two single-process runs whose BatchNorms differ only in float
# rounding (a written-out formula versus torch's kernel). 2e-3 leaves a margin of ~7x and stays
# far below what a missing synchronization costs: 2.6 without synchronized BatchNorm, 1.0 with
# per-process activation statistics (both measured on this run).
#
# Not compared: power-of-two scales (a learned log-scale or a weight maximum that crosses a
# power of two in one run and not in the other doubles a whole tensor's scale) and w1a2 (while
# scales are measured, two activations often tie for the batch's 99.9th percentile and which
# one gets the scale's gradient depends on the last ulp of the others). Either turns a rounding
# difference into a different run, for one process as much as for two: w8a8 with power-of-two
# scales differs by 0.04 between the two single-process runs above.
TOLERANCE = 2e-3


class RaisedInWorker(DataError):
    pass


def _record_ranks(out_dir: str, splits) -> None:
    """Runs in every process: trains RUNS, saving this rank's state each epoch and its writes."""
    out = Path(out_dir)
    rank = int(torch.distributed.get_rank())
    writes: list[str] = []
    for module in (lowbit.train.checkpoint, lowbit.train.run):  # every file train() writes
        real_write = module.atomic_write_bytes

        def recording_write(path, data, real_write=real_write):
            writes.append(Path(path).name)
            return real_write(path, data)

        module.atomic_write_bytes = recording_write
    real_check = World.check_replicas
    epoch = {"tag": "", "index": 0}

    def save_then_check(self, model):
        epoch["index"] += 1
        state = {key: value.clone() for key, value in replica_state(model).items()}
        torch.save(state, out / f"{epoch['tag']}-rank{rank}-epoch{epoch['index']}.pt")
        real_check(self, model)

    World.check_replicas = save_then_check
    for tag, config in RUNS.items():
        epoch.update(tag=tag, index=0)
        train(config, out / tag, splits=splits, progress=False)
    (out / f"writes-rank{rank}.json").write_text(json.dumps(writes))
    torch.distributed.barrier()  # both files are written before rank 1 stops the launch
    if rank == 1:  # and a user error in a worker reaches the caller as itself
        raise RaisedInWorker("raised on rank 1")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    with pytest.raises(RaisedInWorker, match="raised on rank 1"):
        launch(2, _record_ranks, str(out), make_splits())
    return out


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_rank")
    train(RUNS["w8a8"], out, splits=make_splits(), progress=False)
    return out


def test_two_processes_match_one(two_ranks, one_rank):
    one, _ = load_run(one_rank)
    two, _ = load_run(two_ranks / "w8a8")
    state_one, state_two = one.state_dict(), two.state_dict()
    assert state_one.keys() == state_two.keys()
    worst = max(float((state_one[k] - state_two[k]).abs().max()) for k in state_one)
    assert worst < TOLERANCE
    metrics_one = json.loads((one_rank / "metrics.json").read_text())
    metrics_two = json.loads((two_ranks / "w8a8" / "metrics.json").read_text())
    for key in ("accuracy", "val_accuracy", "confusion_matrix", "parameter_bits", "num_test"):
        assert metrics_one[key] == metrics_two[key], key
    assert metrics_one["ood"]["msp"]["auroc"] == pytest.approx(
        metrics_two["ood"]["msp"]["auroc"], abs=TOLERANCE
    )


@pytest.mark.parametrize("tag", list(RUNS))
def test_replicas_identical_after_every_epoch(two_ranks, tag):
    for epoch in range(1, EPOCHS + 1):
        rank0 = torch.load(two_ranks / f"{tag}-rank0-epoch{epoch}.pt", weights_only=True)
        rank1 = torch.load(two_ranks / f"{tag}-rank1-epoch{epoch}.pt", weights_only=True)
        assert rank0.keys() == rank1.keys()
        assert any(key.startswith("quant.") for key in rank0)  # Brevitas' statistics state
        assert any(key.endswith("running_var") for key in rank0)  # BatchNorm statistics
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (tag, epoch, key)
    assert not (two_ranks / f"{tag}-rank0-epoch{EPOCHS + 1}.pt").exists()


@pytest.mark.parametrize("tag", list(RUNS))
def test_statistics_phase_ended_in_both_runs(two_ranks, tag):
    model, _ = load_run(two_ranks / tag)
    counters = [int(v) for k, v in runtime_stats_state(model).items() if k.endswith(".counter")]
    assert counters and all(c > ACT_STATS_STEPS for c in counters)


def test_only_rank_0_writes_files(two_ranks):
    writes = [json.loads((two_ranks / f"writes-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert writes[1] == []
    one_run = ["config.json"] + ["checkpoint.pt"] * EPOCHS + ["metrics.json"]
    assert writes[0] == one_run * len(RUNS)
    for tag in RUNS:
        assert sorted(p.name for p in (two_ranks / tag).iterdir()) == [
            LOCK_FILE,  # rank 0 held the run directory's writer lock
            "checkpoint.pt",
            "config.json",
            "metrics.json",
        ]
        checkpoint = load_checkpoint(two_ranks / tag / "checkpoint.pt")
        assert checkpoint["epoch"] == EPOCHS and checkpoint["step"] == 9 * EPOCHS


def test_nproc_1_is_plain_train(tmp_path, splits, monkeypatch):
    config = tiny_config(epochs=1)
    expected = train(config, tmp_path / "train", splits=splits, progress=False)
    monkeypatch.setattr(dist_module, "launch", pytest.fail)  # no process may be started
    metrics = train_parallel(config, tmp_path / "nproc1", splits=splits, nproc=1, progress=False)
    assert metrics == expected
    state_a = load_run(tmp_path / "train")[0].state_dict()
    state_b = load_run(tmp_path / "nproc1")[0].state_dict()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


@pytest.mark.parametrize("nproc", [0, -2, 1.5])
def test_nproc_must_be_a_positive_integer(tmp_path, splits, nproc):
    with pytest.raises(ConfigError, match="nproc"):
        train_parallel(tiny_config(), tmp_path, splits=splits, nproc=nproc)


def test_batch_size_must_split_evenly(tmp_path, splits, monkeypatch):
    monkeypatch.setattr(dist_module, "launch", pytest.fail)
    with pytest.raises(ConfigError, match="batch_size=6 is not a multiple of nproc=4"):
        train_parallel(tiny_config(batch_size=6), tmp_path / "run", splits=splits, nproc=4)
    assert not (tmp_path / "run").exists()
    # a data set smaller than batch_size makes the whole set the batch: 36 images, 8 processes
    with pytest.raises(ConfigError, match="batch_size=36 is not a multiple of nproc=8"):
        World(rank=0, size=8).check_batch_size(min(64, len(splits.train.y)))


def test_torchrun_launch_refuses_nproc(tmp_path, splits, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        train_parallel(tiny_config(), tmp_path, splits=splits, nproc=2)


def test_cli_nproc_errors_before_any_process_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dist_module, "launch", pytest.fail)
    out = str(tmp_path / "run")
    assert main(["--quiet", "train", "--out", out, "--nproc", "3", "--batch-size", "64"]) == 3
    assert "not a multiple of nproc=3" in capsys.readouterr().err
    assert main(["--quiet", "train", "--out", out, "--nproc", "0"]) == 3
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_equals_nproc_2(tmp_path):
    """`torchrun ... lowbit train` and `lowbit train --nproc 2` are one code path: equal bits."""
    from lowbit.data import write_mvtec

    data = str(write_mvtec(tmp_path / "data", seed=0, per_class=12))
    options = ["--data", data, "--image-size", "16", "--width", "8", "--epochs", "2"]
    options += ["--batch-size", "8"]
    assert main(["--quiet", "train", *options, "--nproc", "2", "--out", str(tmp_path / "a")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, "--nproc_per_node", "2", "-m", "lowbit", "--quiet", "--json", "train"]
    result = subprocess.run(
        [*command, *options, "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == json.loads((tmp_path / "b" / "metrics.json").read_text())
    state_a = load_run(tmp_path / "a")[0].state_dict()
    state_b = load_run(tmp_path / "b")[0].state_dict()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics_a == json.loads(result.stdout)


def _train_stopping_after(config, run_dir: str, splits, stop_after: int | None, resume: bool):
    """Runs in every process: trains, optionally stopping right after epoch `stop_after`'s save."""
    import lowbit.train.loop as loop

    real_save = loop.save_checkpoint

    def save_then_stop(*args, epoch: int, **kwargs):
        real_save(*args, epoch=epoch, **kwargs)
        if epoch == stop_after:
            raise RaisedInWorker(f"stopped after epoch {epoch}")

    loop.save_checkpoint = save_then_stop
    train(config, run_dir, splits=splits, resume=resume, progress=False)


@pytest.mark.slow
def test_two_process_resume_equals_uninterrupted(tmp_path):
    config = RUNS["w1a2"]  # stopped at epoch 3 of 4: 27 steps, inside the statistics phase
    splits = make_splits()
    launch(2, _train_stopping_after, config, str(tmp_path / "straight"), splits, None, False)
    with pytest.raises(RaisedInWorker, match="stopped after epoch 3"):
        launch(2, _train_stopping_after, config, str(tmp_path / "resumed"), splits, 3, False)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    launch(2, _train_stopping_after, config, str(tmp_path / "resumed"), splits, None, True)
    state_a = load_run(tmp_path / "straight")[0].state_dict()
    state_b = load_run(tmp_path / "resumed")[0].state_dict()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    metrics = [
        json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "resumed")
    ]
    assert metrics[0] == metrics[1]
