"""Interrupted + resumed training ends exactly where an uninterrupted run ends."""

import json

import pytest
import torch

import lowbit.train.loop as loop
from lowbit.errors import ConfigError
from lowbit.models import build_model
from lowbit.quant.layers import ACT_STATS_STEPS
from lowbit.train import load_run, train
from lowbit.train.checkpoint import load_checkpoint, runtime_stats_state

from .conftest import tiny_config


class Interrupted(Exception):
    pass


def _train_interrupted(config, run_dir, splits, after_epoch: int, monkeypatch) -> None:
    real_save = loop.save_checkpoint

    def save_then_stop(*args, epoch: int, **kwargs):
        real_save(*args, epoch=epoch, **kwargs)
        if epoch == after_epoch:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_stop)
        with pytest.raises(Interrupted):
            train(config, run_dir, splits=splits, progress=False)


def _assert_same_run(dir_a, dir_b) -> None:
    model_a, _ = load_run(dir_a)
    model_b, _ = load_run(dir_b)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    stats_a, stats_b = runtime_stats_state(model_a), runtime_stats_state(model_b)
    assert all(torch.equal(stats_a[key], stats_b[key]) for key in stats_a)
    metrics_a = json.loads((dir_a / "metrics.json").read_text())
    metrics_b = json.loads((dir_b / "metrics.json").read_text())
    assert metrics_a == metrics_b


@pytest.mark.parametrize(
    ("batch_size", "epochs", "stop_after"),
    [
        (8, 2, 1),  # 4 steps per epoch: interrupted while activation statistics are collected
        (2, 3, 2),  # 18 steps per epoch: interrupted after statistics turned into parameters
    ],
)
def test_resume_equals_uninterrupted(tmp_path, splits, monkeypatch, batch_size, epochs, stop_after):
    config = tiny_config(batch_size=batch_size, epochs=epochs)
    train(config, tmp_path / "straight", splits=splits, progress=False)
    _train_interrupted(config, tmp_path / "resumed", splits, stop_after, monkeypatch)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    train(config, tmp_path / "resumed", splits=splits, resume=True, progress=False)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_adamw_resume_equals_uninterrupted(tmp_path, splits, monkeypatch):
    config = tiny_config(optimizer="adamw", lr=1e-3, loss="ce", recipe="w2a2")
    train(config, tmp_path / "straight", splits=splits, progress=False)
    _train_interrupted(config, tmp_path / "resumed", splits, 1, monkeypatch)
    train(config, tmp_path / "resumed", splits=splits, resume=True, progress=False)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_checkpoint_is_plain_and_keeps_the_stats_counter(tmp_path, splits):
    train(tiny_config(epochs=1), tmp_path, splits=splits, progress=False)  # 4 steps
    checkpoint = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    keys = {"model", "quant_state", "optimizer", "step", "epoch", "rng", "config"}
    assert set(checkpoint) == keys
    assert checkpoint["step"] == 4 and checkpoint["epoch"] == 1
    counters = [v for k, v in checkpoint["quant_state"].items() if k.endswith(".counter")]
    assert counters and all(int(c) == 4 for c in counters)
    # Brevitas alone would lose the counter: load_state_dict ends statistics collection
    model, _ = load_run(tmp_path)
    fresh = build_model(model.recipe, model.config)
    fresh.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"], strict=False)
    brevitas_counters = [int(v) for k, v in runtime_stats_state(fresh).items() if "counter" in k]
    assert all(c == ACT_STATS_STEPS + 1 for c in brevitas_counters)
    assert all(int(v) == 4 for k, v in runtime_stats_state(model).items() if "counter" in k)


def test_resume_needs_checkpoint_and_same_config(tmp_path, splits):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(tiny_config(), tmp_path / "empty", splits=splits, resume=True, progress=False)
    train(tiny_config(epochs=1), tmp_path / "run", splits=splits, progress=False)
    with pytest.raises(ConfigError, match=r"differs in \['epochs'\]"):
        train(tiny_config(epochs=3), tmp_path / "run", splits=splits, resume=True, progress=False)


def test_resume_of_finished_run_only_evaluates(tmp_path, splits):
    first = train(tiny_config(epochs=1), tmp_path, splits=splits, progress=False)
    again = train(tiny_config(epochs=1), tmp_path, splits=splits, resume=True, progress=False)
    assert first == again
