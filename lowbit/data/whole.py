"""Whole images for anomaly detection: defect-free parts to fit on, painted parts to test on.

The built-in set is written in MVTec AD layout, one category per texture:
`<texture>/train/good/NNN.png`, `<texture>/test/good/NNN.png`,
`<texture>/test/<defect>/NNN.png` and `<texture>/ground_truth/<defect>/NNN_mask.png` (0/255).
Every defect type is written, the held-out ones included: here they are test images only.

A whole image is a clean `random_crop` of the texture; a defect is painted by the crop
generator's own painter (`synth.paint_defect`) inside a `window` px square placed at random, so
a defect has the pixel size it has in the classifier's crops and covers a small part of a larger
image, as in MVTec AD. Image k of a folder depends only on (seed, texture, folder, k).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.data.images import read_image, read_pair
from lowbit.data.loaders import GOOD, Record, image_files, scan_good, scan_mvtec_category
from lowbit.data.synth import BUILTIN_CLASSES, DEFAULT_SIZE, paint_defect
from lowbit.data.textures import CATEGORIES, load_texture, random_crop
from lowbit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

WHOLE_IMAGE_SIZE = 128
# 200 clean parts per texture: PatchCore-style banks saturate after ~100 images of a texture
# (Roth et al. 2022, Sec. 4.4); a few hundred leave room to hold some out.
DEFAULT_TRAIN_GOOD = 200
DEFAULT_TEST_GOOD = 20
DEFAULT_TEST_PER_DEFECT = 10


def whole_image_rng(seed: int, texture: str, folder: str, index: int) -> np.random.Generator:
    """Return the generator of image `index` of `<texture>/<folder>`; crc32 keeps it stable."""
    return np.random.default_rng(
        [seed, zlib.crc32(texture.encode()), zlib.crc32(folder.encode()), index]
    )


def generate_whole_image(
    rng: np.random.Generator,
    texture: str,
    defect: str | None,
    size: int = WHOLE_IMAGE_SIZE,
    window: int = DEFAULT_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8 size x size x 3, mask bool size x size); `defect` None: all clean."""
    image = random_crop(rng, load_texture(texture), size)
    mask = np.zeros((size, size), dtype=bool)
    if defect is None:
        return image, mask
    side = min(window, size)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    region = (slice(top, top + side), slice(left, left + side))
    image[region], mask[region] = paint_defect(rng, image[region], defect)
    return image, mask


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_whole_images(
    root: Path,
    size: int = WHOLE_IMAGE_SIZE,
    n_train_good: int = DEFAULT_TRAIN_GOOD,
    n_test_good: int = DEFAULT_TEST_GOOD,
    n_test_per_defect: int = DEFAULT_TEST_PER_DEFECT,
    textures: Sequence[str] = CATEGORIES,
    defects: Sequence[str] = BUILTIN_CLASSES,
    seed: int = 0,
    window: int = DEFAULT_SIZE,
) -> Path:
    """Write the built-in whole-image set in MVTec AD layout under `root` and return `root`."""
    if size < 16 or window < 16:
        raise ConfigError(f"size and window must be at least 16 px, got {size} and {window}")
    if min(n_train_good, n_test_good, n_test_per_defect) < 0:
        raise ConfigError(
            "image counts (n_train_good, n_test_good, n_test_per_defect) must be >= 0"
        )
    bad = [name for name in textures if name not in CATEGORIES]
    if bad:
        raise ConfigError(f"unknown texture(s) {bad}; choose from {CATEGORIES}")
    root = Path(root)
    for texture in textures:
        folders = [("train/good", None, n_train_good), ("test/good", None, n_test_good)]
        folders += [(f"test/{defect}", defect, n_test_per_defect) for defect in defects]
        for folder, defect, count in folders:
            for index in range(count):
                rng = whole_image_rng(seed, texture, folder, index)
                image, mask = generate_whole_image(rng, texture, defect, size, window)
                _save(root / texture / folder / f"{index:03d}.png", image)
                if defect is not None:
                    mask_path = root / texture / "ground_truth" / defect / f"{index:03d}_mask.png"
                    _save(mask_path, mask.astype(np.uint8) * 255)
    log.info("wrote whole images of %s in MVTec AD layout to %s", list(textures), root)
    return root


@dataclass
class WholeImageSet:
    """One MVTec AD category: defect-free training images and labelled test images.

    `test_labels[i]` indexes `test_types`, whose entry 0 is "good"; `test_masks[i]` is bool HxW,
    all False for a good image. Images are uint8 HxWx3 at source resolution.
    """

    train_good: list[np.ndarray]
    test_images: list[np.ndarray]
    test_masks: list[np.ndarray]
    test_labels: np.ndarray
    test_types: tuple[str, ...]
    test_paths: list[str]


def load_whole_images(category: Path, max_train_good: int | None = None) -> WholeImageSet:
    """Return the train/good and test images of the MVTec AD category folder `category`.

    `max_train_good` keeps the first images of train/good by file name. A category without
    test/good is accepted (its test images are then all defective).
    """
    category = Path(category)
    train_paths = scan_good(category, "train")[:max_train_good]
    if not (category / "test").is_dir():
        raise DataError(f"{category}: no test folder (expected test/<defect>/NNN.png)")
    good_dir = category / "test" / GOOD
    records = [Record(p, None, GOOD) for p in image_files(good_dir)] if good_dir.is_dir() else []
    records += scan_mvtec_category(category)
    types = tuple(dict.fromkeys([GOOD, *(r.class_name for r in records)]))
    images, masks = [], []
    for record in records:
        image, mask = read_pair(record.image_path, record.mask_path)
        images.append(image)
        masks.append(np.zeros(image.shape[:2], dtype=bool) if mask is None else mask)
    return WholeImageSet(
        train_good=[read_image(path) for path in train_paths],
        test_images=images,
        test_masks=masks,
        test_labels=np.array([types.index(r.class_name) for r in records], dtype=np.int64),
        test_types=types,
        test_paths=[str(r.image_path) for r in records],
    )
