"""Tiny synthetic splits and configs: a few dozen 16x16 images whose class sets the mean."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from lowbit.data.sets import ArraySet
from lowbit.train import TrainConfig

IMAGE_SIZE = 16
CLASS_NAMES = ["scratch", "stain", "hole"]


@dataclass
class TinySplits:
    """Stands in for lowbit.data.Splits."""

    train: ArraySet
    val: ArraySet
    test: ArraySet
    ood: ArraySet
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    unknown_names: list[str] = field(default_factory=lambda: ["dent"])


def _array_set(rng: np.random.Generator, labels: np.ndarray, means: np.ndarray) -> ArraySet:
    noise = rng.normal(0.0, 0.6, size=(len(labels), 3, IMAGE_SIZE, IMAGE_SIZE))
    x = np.clip(means[labels][:, :, None, None] + noise, -2.0, 2.0).astype(np.float32)
    return ArraySet(x=x, y=labels.astype(np.int64))


def make_splits(seed: int = 0, per_class: int = 12) -> TinySplits:
    """Returns train/val/test with per_class / 4 / 4 images per class and 12 OOD images."""
    rng = np.random.default_rng(seed)
    means = np.array([[1.0, -0.5, 0.0], [-0.5, 1.0, 0.0], [0.0, -0.5, 1.0], [1.0, 1.0, 1.0]])
    classes = len(CLASS_NAMES)
    ood = _array_set(rng, np.full(12, 3), means)
    ood.y[:] = -1
    return TinySplits(
        train=_array_set(rng, np.repeat(np.arange(classes), per_class), means),
        val=_array_set(rng, np.repeat(np.arange(classes), 4), means),
        test=_array_set(rng, np.repeat(np.arange(classes), 4), means),
        ood=ood,
    )


def tiny_config(**overrides: object) -> TrainConfig:
    """Returns a config for conv4 width 8 at 16 px that trains in well under a second."""
    fields = {
        "recipe": "w1a2",
        "width": 8,
        "image_size": IMAGE_SIZE,
        "epochs": 2,
        "batch_size": 8,
        "warmup_steps": 2,
        "lr": 0.05,
        "optimizer": "sgd",  # lr 0.05 is SGD's; "auto" would pick AdamW for w1a2
        "data": "synthetic",
    }
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def splits() -> TinySplits:
    return make_splits()
