"""Fixtures: tiny MVTec AD and image-folder trees written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_trees import save_image, write_category


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """An MVTec AD tree: `crack` appears in both categories, `grid` is grayscale."""
    root = tmp_path / "mvtec"
    write_category(root, "bottle", {"crack": 3, "contamination": 4})
    write_category(root, "grid", {"crack": 3, "bent": 5}, gray=True)
    (root / "license.txt").write_text("not a category")
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """An image folder of three classes in PNG, JPEG and BMP, of different sizes."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name, suffix in (("dent", ".png"), ("Scratch", ".jpg"), ("stain", ".bmp")):
        for index in range(5):
            pixels = rng.integers(0, 256, size=(20 + index, 30, 3), dtype=np.uint8)
            save_image(root / name / f"{index}{suffix}", pixels)
    (root / "dent" / "notes.txt").write_text("ignored")
    return root
