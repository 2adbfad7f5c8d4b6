"""Helpers that write tiny on-disk data sets with PIL (imported by conftest and tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path: Path, pixels: np.ndarray) -> Path:
    """Write `pixels` (uint8 HxW or HxWx3) to `path`, creating folders; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def defect_pair(rng: np.random.Generator, height: int, width: int, gray: bool = False):
    """Return (image, mask uint8 0/255): noise with one bright red rectangle, masked."""
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    top, left = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + 6, left : left + 6] = 255
    image[mask > 0] = (250, 0, 0)
    return (image[..., 0] if gray else image), mask


def write_category(root: Path, category: str, defects: dict[str, int], gray: bool = False) -> None:
    """Write one MVTec AD category: `defects` maps defect type -> number of test images."""
    rng = np.random.default_rng(len(category))
    size = (40, 48) if gray else (36, 36)
    for defect, count in defects.items():
        for index in range(count):
            image, mask = defect_pair(rng, *size, gray=gray)
            save_image(root / category / "test" / defect / f"{index:03d}.png", image)
            save_image(root / category / "ground_truth" / defect / f"{index:03d}_mask.png", mask)
    for folder in ("test", "train"):
        for index in range(2):
            clean = rng.integers(60, 120, size=size, dtype=np.uint8)
            save_image(root / category / folder / "good" / f"{index:03d}.png", clean)
