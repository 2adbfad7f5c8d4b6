"""A run is never reused, resumed or evaluated on other data than it was trained on."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.data import splits_fingerprint
from lowbit.errors import ConfigError
from lowbit.train import train
from lowbit.train.reuse import train_or_reuse
from lowbit.train.run import check_same_data

from .conftest import make_splits, tiny_config


def test_fingerprint_follows_every_image_label_and_name(splits):
    reference = splits_fingerprint(splits)
    assert splits_fingerprint(make_splits()) == reference  # same data, same digest
    changes = []
    pixel = copy.deepcopy(splits)
    pixel.train.x[3, 1, 2, 2] = np.nextafter(pixel.train.x[3, 1, 2, 2], np.float32(9))
    changes.append(pixel)
    label = copy.deepcopy(splits)
    label.val.y[0] = (label.val.y[0] + 1) % 3
    changes.append(label)
    named = copy.deepcopy(splits)
    named.class_names = ["scratch", "stain", "dent"]
    changes.append(named)
    fewer = copy.deepcopy(splits)
    fewer.ood.x, fewer.ood.y = fewer.ood.x[1:], fewer.ood.y[1:]
    changes.append(fewer)
    assert len({splits_fingerprint(change) for change in changes} | {reference}) == 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, splits):
    run = tmp_path_factory.mktemp("fingerprint") / "run"
    config = tiny_config(epochs=1)
    train(config, run, splits=splits, progress=False)
    return config, run


def test_config_json_records_the_fingerprint(trained, splits):
    _, run = trained
    record = json.loads((run / "config.json").read_text())
    assert record["data_fingerprint"] == splits_fingerprint(splits)


def test_reuse_and_resume_refuse_other_data(trained, splits):
    config, run = trained
    other = make_splits(seed=1)
    stamp = os.stat(run / "checkpoint.pt").st_mtime_ns
    assert train_or_reuse(config, run, False, splits=splits) == json.loads(
        (run / "metrics.json").read_text()
    )
    assert os.stat(run / "checkpoint.pt").st_mtime_ns == stamp  # reused, not retrained
    with pytest.raises(ConfigError, match=r"config\.json: data .* differ .*data_fingerprint"):
        train_or_reuse(config, run, False, splits=other)
    with pytest.raises(ConfigError, match=r"config\.json: data .* differ"):
        train(config, run, splits=other, resume=True, progress=False)
    assert os.stat(run / "checkpoint.pt").st_mtime_ns == stamp  # nothing was overwritten


def test_runs_without_a_fingerprint_pass(splits):
    check_same_data({"data": "builtin"}, splits, "old/config.json")  # written before the field
    check_same_data({"data_fingerprint": None}, splits, "x/config.json")
    with pytest.raises(ConfigError, match=r"^x/config\.json: data 'builtin' differ"):
        check_same_data({"data_fingerprint": "0" * 64}, splits, "x/config.json")


def test_per_class_is_validated_and_travels_with_the_run(tmp_path, capsys):
    """A run on a smaller built-in set: eval rebuilds that set (same fingerprint), not 600."""
    with pytest.raises(ConfigError, match="per_class=0"):
        tiny_config(per_class=0)
    run = tmp_path / "run"
    args = ["--quiet", "train", "--recipe", "w2a2", "--width", "8", "--image-size", "16"]
    args += ["--epochs", "1", "--per-class", "20", "--out", str(run)]
    assert main(args) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["train"]["per_class"] == 20
    assert main(["--quiet", "--json", "eval", str(run)]) == 0
    assert '"accuracy"' in capsys.readouterr().out
