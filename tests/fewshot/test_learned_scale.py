"""A learned cosine scale (TrainConfig.learn_scale) is trained, exported, verified and scored."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from lowbit.cli import main
from lowbit.deploy import export_run
from lowbit.errors import ConfigError
from lowbit.train import TrainConfig, load_run, train
from lowbit.train.reuse import is_trained
from lowbit.verify.run import verify_run

from .conftest import tiny_config


def config(data, **overrides) -> TrainConfig:
    fields = dict(epochs=4, loss="ce", learn_scale=True, cosine_scale=8.0)
    return tiny_config(data, "w2a2", **{**fields, **overrides})


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, data_folder):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("learned") / "run"
    train(config(data_folder), run_dir, progress=False)
    return run_dir


def test_ce_trains_the_scale_and_export_carries_it(learned_run):
    model, record = load_run(learned_run)
    assert record["model"]["learn_scale"] is True
    assert isinstance(model.head.scale, torch.nn.Parameter)
    learned = float(model.head.scale)
    assert learned != 8.0  # it moved from its start value
    assert json.loads((learned_run / "metrics.json").read_text())["cosine_scale"] == learned
    export_dir, _ = export_run(learned_run)
    head = json.loads((export_dir / "model.json").read_text())["head"]
    assert head["cosine_scale"] == learned  # the float32 value, exactly
    report = verify_run(export_dir, n=16, random=16, progress=False)  # all four executors
    assert report["unexplained"] == 0 and report["checked_values"] > 0


def test_logitnorm_keeps_the_scale_fixed(tmp_path, data_folder, caplog):
    """LogitNorm's loss is invariant to the scale: the run builds it fixed and says so."""
    with caplog.at_level(logging.WARNING, logger="lowbit.train.loop"):
        train(config(data_folder, loss="logitnorm", epochs=1), tmp_path / "ln", progress=False)
    model, record = load_run(tmp_path / "ln")
    assert record["train"]["learn_scale"] is True and record["model"]["learn_scale"] is False
    assert float(model.head.scale) == 8.0
    assert "does not depend on the cosine scale; it stays at 8" in caplog.text


def test_bad_scale_options_are_config_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cosine_scale=0.0 must be positive"):
        TrainConfig(cosine_scale=0.0)
    with pytest.raises(ConfigError, match="cosine_scale=nan must be positive"):
        TrainConfig(cosine_scale=math.nan)
    with pytest.raises(ConfigError, match="learn_scale needs head='cosine'"):
        TrainConfig(head="linear", learn_scale=True)
    code = main(["train", "--head", "linear", "--learn-scale", "--out", str(tmp_path / "r")])
    assert code != 0
    assert "learn_scale needs head='cosine'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_runs_saved_before_a_field_existed_are_still_reused(learned_run, tmp_path):
    """config.json without a newer field (here learn_scale) counts as that field's default."""
    fixed = config(learned_run.parent, learn_scale=False)  # any config; only the record matters
    record = json.loads((learned_run / "config.json").read_text())
    record["train"] = {**record["train"], **fixed.resolved().to_dict()}
    del record["train"]["learn_scale"]
    record["data_fingerprint"] = None  # the data check is tested elsewhere
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    (old / "config.json").write_text(json.dumps(record))
    assert is_trained(old, fixed)
    assert not is_trained(old, config(learned_run.parent))  # learn_scale=True differs
    del record["train"]
    (old / "config.json").write_text(json.dumps(record))
    assert not is_trained(old, fixed)
