"""A tiny export (a calibrated, untrained conv4-8 w2a2 cut for crops) and tiny whole images.

`fitted_export` holds a detector for the built-in texture brick fitted on the 10 train/good
images of `whole_data` (64 px): 8 fit images and 2 validation images. Session-scoped; tests
that change an export copy it first (`fitted_copy`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lowbit.data import NORMALIZATION, crop_rule, make_whole_images
from lowbit.detect.fit import fit_detector
from lowbit.export.api import export_model
from tests.export.helpers import calibrated

WHOLE_SIZE = 64
CLASS_NAMES = ["crack", "hole", "scratch", "stain"]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    export = tmp_path_factory.mktemp("detect_export") / "export"
    model = calibrated("w2a2", "conv4")
    export_model(
        model, export, class_names=CLASS_NAMES, normalization=NORMALIZATION, crop=crop_rule()
    )
    return export


@pytest.fixture(scope="session")
def whole_data(tmp_path_factory) -> Path:
    """brick in MVTec AD layout: 10 train/good, 2 test/good, 1 crack and 1 hole (64 px)."""
    root = tmp_path_factory.mktemp("whole") / "data"
    make_whole_images(
        root, WHOLE_SIZE, 10, 2, 1, textures=("brick",), defects=("crack", "hole"), seed=0
    )
    return root


@pytest.fixture(scope="session")
def fitted_export(tmp_path_factory, tiny_export, whole_data) -> Path:
    export = tmp_path_factory.mktemp("fitted") / "export"
    shutil.copytree(tiny_export, export)
    fit_detector(export, whole_data / "brick", bank_size=200)
    return export


@pytest.fixture
def fitted_copy(tmp_path, fitted_export) -> Path:
    target = tmp_path / "export"
    shutil.copytree(fitted_export, target)
    return target
