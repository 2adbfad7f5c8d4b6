"""`lowbit eval`'s text report: everything metrics.json holds, in words, with no None."""

from __future__ import annotations

import math

from lowbit.core.scores import SCORES
from lowbit.quant import get_recipe
from lowbit.train.report import accuracy_standard_error, eval_report

NAMES = ["scratch", "crack", "stain"]


def metrics(loss: str = "logitnorm") -> dict:
    matrix = [[8, 1, 1], [0, 10, 0], [2, 0, 8]]
    return {
        "recipe": "w1a2",
        "head": "cosine",
        "loss": loss,
        "tau": 1.0 if loss == "logitnorm" else None,
        "cosine_scale": 10.0,
        "epochs": 15,
        "seed": 3,
        "parameter_bits": 157_184,
        "accuracy": 26 / 30,
        "val_accuracy": 0.9,
        "per_class_accuracy": {"scratch": 0.8, "crack": 1.0, "stain": 0.8},
        "confusion_matrix": matrix,
        "class_names": NAMES,
        "num_test": 30,
        "num_ood": 12,
        "ood": {
            name: {"auroc": 0.5 + i / 100, "fpr95": 0.9 - i / 100} for i, name in enumerate(SCORES)
        },  # fmt: skip
        "ood_default": "msp",
    }


RECORD = {
    "recipe": get_recipe("w1a2").to_dict(),
    "model": {"backbone": "conv4", "width": 64, "image_size": 32, "head": "cosine"},
    "train": {"loss": "logitnorm", "epochs": 15, "seed": 3, "data": "builtin"},
    "unknown_names": ["burn", "fold"],
}
DESCRIPTION = {"ood": {"score": "energy"}, "deployed_bits": {"total": 150_784, "layers": []}}


def test_report_holds_recipe_accuracy_classes_matrix_scores_and_sizes():
    text = eval_report(metrics(), RECORD, DESCRIPTION, "runs/main/w1a2")
    assert "None" not in text
    assert "w1a2: 1-bit bipolar weights, 2-bit activations" in text
    assert "loss logitnorm (τ 1), 15 epochs, seed 3" in text
    error = 100 * math.sqrt((26 / 30) * (4 / 30) / 30)
    assert f"86.67 % ± {error:.2f} (standard error, 30 test images)" in text
    lines = text.splitlines()
    for i, name in enumerate(NAMES):  # per-class table and confusion matrix row
        assert any(line.split()[:1] == [name] for line in lines), name
        row = [str(c) for c in metrics()["confusion_matrix"][i]]
        assert any(line.split() == [str(i), name, *row] for line in lines), name
    for name in SCORES:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "energy (deployed)" in text and "msp (deployed)" not in text  # model.json's score
    assert "157,184" in text and "150,784" in text
    assert "parameter bits" in text and "deployed bits" in text


def test_report_before_export_and_with_cross_entropy():
    text = eval_report(metrics("ce"), RECORD)
    assert "None" not in text and "τ" not in text and "loss ce" in text
    assert "msp (deployed)" in text and "counted at export" in text


def test_standard_error():
    assert accuracy_standard_error(0.5, 100) == 0.05
    assert accuracy_standard_error(1.0, 10) == 0.0
