"""A tiny image-folder data set (3 base + 3 novel classes of 32x32 PNGs) and runs trained on it.

Each class is a colour plus noise, so a 6-epoch conv4-8 separates the base classes and its
features tell the novel ones apart more often than chance. Session-scoped: tests that change a
run or an export copy it first (`copy_export`). `crop_run` is the detector's setting instead: a
model trained on mask crops of a small built-in MVTec-layout folder (`mvtec_folder`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowbit.data import write_mvtec
from lowbit.deploy import export_run
from lowbit.train import TrainConfig, train

BASE = ("aa_red", "bb_green", "cc_blue")
NOVEL = ("dd_yellow", "ee_cyan", "ff_magenta")
COLOURS = {
    "aa_red": (200, 60, 60),
    "bb_green": (60, 200, 60),
    "cc_blue": (60, 60, 200),
    "dd_yellow": (200, 200, 60),
    "ee_cyan": (60, 200, 200),
    "ff_magenta": (200, 60, 200),
}
PER_CLASS = 20
SIZE = 32


def write_folder(root: Path, seed: int = 0) -> Path:
    """Writes root/<class>/NNN.png; returns root."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(PER_CLASS):
            noise = rng.normal(0, 40, size=(SIZE, SIZE, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index:03d}.png")
    return root


def tiny_config(data: Path, recipe: str, **overrides: object) -> TrainConfig:
    """Returns the config of a conv4-8 run on the folder `data` that trains in seconds."""
    fields = dict(
        recipe=recipe,
        width=8,
        image_size=SIZE,
        epochs=6,
        batch_size=8,
        warmup_steps=2,
        lr=0.05,
        data=str(data),
        unknown=NOVEL,
        crop=False,
    )
    return TrainConfig(**{**fields, **overrides})


def tiny_run(out: Path, data: Path, recipe: str, **overrides: object) -> Path:
    torch.set_num_threads(1)
    train(tiny_config(data, recipe, **overrides), out, progress=False)
    return out


@pytest.fixture(scope="session")
def data_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("fewshot_data") / "data")


@pytest.fixture(scope="session")
def w2a2_run(tmp_path_factory, data_folder) -> Path:
    """A trained and exported w2a2 run (the export lives in the run folder)."""
    run_dir = tiny_run(tmp_path_factory.mktemp("runs") / "w2a2", data_folder, "w2a2")
    export_run(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def fp32_run(tmp_path_factory, data_folder) -> Path:
    return tiny_run(tmp_path_factory.mktemp("runs") / "fp32", data_folder, "fp32")


@pytest.fixture
def copy_export(tmp_path, w2a2_run) -> Path:
    """A private copy of the exported w2a2 run, free to change."""
    target = tmp_path / "export"
    shutil.copytree(w2a2_run, target)
    return target


@pytest.fixture(scope="session")
def mvtec_folder(tmp_path_factory) -> Path:
    """The built-in set in MVTec AD layout: 48x48 images with ground-truth masks, 8 per type."""
    root = tmp_path_factory.mktemp("mvtec") / "data"
    return write_mvtec(root, seed=0, per_class=8, size=48, good_per_category=1)


@pytest.fixture(scope="session")
def crop_run(tmp_path_factory, mvtec_folder) -> Path:
    """A w2a2 run trained on 16 px crops around the masks of `mvtec_folder`, exported."""
    overrides = dict(image_size=16, epochs=1, unknown=("burn", "fold"), crop=True)
    run_dir = tiny_run(tmp_path_factory.mktemp("runs") / "crops", mvtec_folder, "w2a2", **overrides)
    export_run(run_dir)
    return run_dir
