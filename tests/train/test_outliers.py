"""Synthetic outliers from known crops: built from the batch alone, never from a held-out type."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowbit.bench.ood_selection import Candidate, SelectionOptions, run_selection
from lowbit.core.scores import SCORES, VIEW_SCORES
from lowbit.data import load_splits
from lowbit.errors import ConfigError
from lowbit.train import TrainConfig, train
from lowbit.train.outliers import (
    BUILDERS,
    OUTLIER_KINDS,
    _partners,
    make_outliers,
    uniform_loss,
)


def batch(n: int = 16, classes: int = 4, size: int = 16):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=generator)
    y = torch.arange(n) % classes
    return x, y


def test_partners_are_of_another_class():
    x, y = batch()
    partner = _partners(y, torch.Generator().manual_seed(1))
    assert torch.all(y[partner] != y)


def test_cutmix_pixels_come_from_the_crop_or_its_partner():
    x, y = batch()
    out = BUILDERS["cutmix"](x, y, torch.Generator().manual_seed(2))
    for i in range(len(x)):
        from_self = out[i] == x[i]
        others = [j for j in range(len(x)) if y[j] != y[i]]
        pasted = ~from_self.all(0)  # pixels replaced in every channel
        assert pasted.any() and from_self.all(0).any()
        assert any(torch.equal(out[i][:, pasted], x[j][:, pasted]) for j in others)


def test_mixup_is_a_blend_of_two_classes():
    x, y = batch()
    out = BUILDERS["mixup"](x, y, torch.Generator().manual_seed(3))
    for i in range(len(x)):
        found = False
        for j in (j for j in range(len(x)) if y[j] != y[i]):
            # out = w x_i + (1 - w) x_j for one w in [0.35, 0.65]: fit w, check the residual
            direction = (x[i] - x[j]).double()
            w = float(((out[i] - x[j]).double() * direction).sum() / (direction**2).sum())
            residual = (out[i].double() - x[j] - w * direction).abs().max()
            if residual < 1e-5 and 0.349 < w < 0.651:
                found = True
        assert found, i


def test_shuffle_and_erase_keep_the_pixels_of_the_crop():
    x, y = batch()
    shuffled = BUILDERS["shuffle"](x, y, torch.Generator().manual_seed(4))
    for i in range(len(x)):
        assert torch.equal(shuffled[i].flatten().sort().values, x[i].flatten().sort().values)
    assert not torch.equal(shuffled, x)
    erased = BUILDERS["erase"](x, y, torch.Generator().manual_seed(5))
    assert not torch.equal(erased, x)
    for i in range(len(x)):  # every value is one of the crop's own
        assert torch.isin(erased[i], x[i]).all()


def test_make_outliers_count_kinds_and_determinism():
    x, y = batch(32)
    first = make_outliers(x, y, OUTLIER_KINDS, 12, torch.Generator().manual_seed(6))
    again = make_outliers(x, y, OUTLIER_KINDS, 12, torch.Generator().manual_seed(6))
    assert first.shape == (12, *x.shape[1:])
    assert torch.equal(first, again)
    assert make_outliers(x, y, OUTLIER_KINDS, 0, torch.Generator()).shape[0] == 0


def test_uniform_loss_is_log_k_for_equal_logits_and_larger_otherwise():
    equal = torch.zeros(4, 5)
    assert float(uniform_loss(equal)) == pytest.approx(math.log(5))
    assert float(uniform_loss(torch.tensor([[5.0, 0, 0, 0, 0]]))) > math.log(5)


def test_config_rejects_bad_oe_options():
    with pytest.raises(ConfigError, match="oe_kinds"):
        TrainConfig(oe_weight=1.0, oe_kinds=("paint_burn",))
    with pytest.raises(ConfigError, match="oe_weight"):
        TrainConfig(oe_weight=-1.0)
    config = TrainConfig(oe_weight=0.5, oe_kinds=["mixup"])
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


KNOWN = ("aa", "bb", "cc", "dd")
HELD_OUT = ("xx", "yy")


def write_folder(root: Path) -> Path:
    """Known types as PNGs of distinct colours; held-out types as files no reader can open."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(KNOWN):
        (root / name).mkdir(parents=True)
        colour = np.array([60 + 50 * index, 200 - 40 * index, 120])
        for k in range(12):
            pixels = np.clip(colour + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k:02d}.png")
    for name in HELD_OUT:
        (root / name).mkdir()
        for k in range(3):
            (root / name / f"{k:02d}.png").write_bytes(b"reading this image is a leak")
    return root


@pytest.fixture(scope="module")
def guarded_data(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("guarded") / "data")


def test_held_out_images_would_fail_if_read(guarded_data):
    with pytest.raises(Exception, match="xx|yy"):
        load_splits(str(guarded_data), image_size=16, crop=False, unknown=HELD_OUT)


def test_oe_training_never_reads_a_held_out_type(guarded_data, tmp_path):
    torch.set_num_threads(1)
    splits = load_splits(
        str(guarded_data), image_size=16, crop=False, unknown=["dd"], exclude=HELD_OUT
    )
    assert splits.class_names == ("aa", "bb", "cc") and splits.unknown_names == ("dd",)
    config = TrainConfig(
        recipe="w2a2",
        width=4,
        image_size=16,
        epochs=1,
        batch_size=8,
        warmup_steps=1,
        data=str(guarded_data),
        unknown=("dd",),
        crop=False,
        oe_weight=0.5,
    )
    metrics = train(config, tmp_path / "run", splits=splits, progress=False)
    assert set(metrics["ood"]) >= {"msp", "rel_mahalanobis", "prototype"}


def test_leave_one_type_out_never_trains_on_the_pseudo_unknown(guarded_data, tmp_path):
    torch.set_num_threads(1)
    options = SelectionOptions(
        data=str(guarded_data),
        unknown=HELD_OUT,
        recipe="fp32",
        epochs=1,
        per_class=None,
        width=4,
        image_size=16,
        crop=False,
    )
    candidates = (Candidate("plain"), Candidate("oe", 0.5, ("mixup",)))
    result = run_selection(options, tmp_path / "sel", candidates, progress=False)
    assert result["options"]["folds"] == list(KNOWN)
    for pseudo in KNOWN:
        for candidate in ("plain", "oe"):
            record = json.loads(
                (tmp_path / "sel" / f"fold_{pseudo}" / candidate / "config.json").read_text()
            )
            assert pseudo not in record["class_names"]
            assert record["unknown_names"] == [pseudo]
            assert not set(HELD_OUT) & set(record["class_names"] + record["unknown_names"])
    ranking = result["ranking"]
    assert [row["fpr95"] for row in ranking] == sorted(row["fpr95"] for row in ranking)
    assert result["chosen"] == {k: ranking[0][k] for k in ("candidate", "score")}
    # two candidates x every score, and every view score on the features summed over the views
    assert len(ranking) == 2 * (len(SCORES) + len(VIEW_SCORES))
    assert {row["score"] for row in ranking} >= {"msp", "rel_mahalanobis@8views"}


def test_a_run_saved_before_outlier_exposure_existed_compares_as_trained_without_it():
    saved = TrainConfig().to_dict()
    for name in ("oe_weight", "oe_kinds", "oe_fraction"):
        del saved[name]
    filled = TrainConfig.with_defaults(saved)
    assert filled["oe_weight"] == 0.0
    assert filled == TrainConfig(oe_weight=0.0).to_dict()
    assert filled != TrainConfig(oe_weight=0.5).to_dict()
