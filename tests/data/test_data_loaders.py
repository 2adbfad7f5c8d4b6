"""MVTec AD and image-folder trees: layout detection, scanning, and every refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from data_trees import save_image, write_category
from PIL import Image

from lowbit.data import BUILTIN_CLASSES, detect_layout, load_folder, scan, write_mvtec
from lowbit.errors import DataError


def test_mvtec_tree_merges_defect_types_across_categories(mvtec_root: Path):
    assert detect_layout(mvtec_root) == "mvtec"
    raw = load_folder(mvtec_root)
    assert raw.class_names == ("bent", "contamination", "crack")
    assert np.array_equal(np.bincount(raw.labels), [5, 4, 6])  # crack: 3 bottle + 3 grid
    for image, mask, path in zip(raw.images, raw.masks, raw.paths):
        assert image.ndim == 3 and image.shape[2] == 3 and mask.shape == image.shape[:2]
        assert "/good/" not in path
        # the defect is a red square, which the grayscale category stores as its red level
        defect_colour = (250, 250, 250) if "/grid/" in path else (250, 0, 0)
        assert np.all(image[mask] == defect_colour)


def test_mvtec_masks_mark_the_painted_defect(mvtec_root: Path):
    raw = load_folder(mvtec_root / "bottle")  # a single category is a root too
    assert raw.class_names == ("contamination", "crack")
    for image, mask in zip(raw.images, raw.masks):
        assert mask.sum() == 36 and np.all(image[mask] == (250, 0, 0))


def test_prefix_category_keeps_categories_apart(mvtec_root: Path):
    names = {r.class_name for r in scan(mvtec_root, prefix_category=True)}
    assert names == {"bottle/contamination", "bottle/crack", "grid/bent", "grid/crack"}


def test_write_mvtec_round_trips_through_the_loader(tmp_path: Path):
    root = write_mvtec(tmp_path / "builtin", seed=0, per_class=4, good_per_category=1)
    assert detect_layout(root) == "mvtec"
    raw = load_folder(root)
    assert set(raw.class_names) == set(BUILTIN_CLASSES)
    assert np.array_equal(np.bincount(raw.labels), [4] * len(BUILTIN_CLASSES))
    mask = np.asarray(Image.open(root / "brick/ground_truth/crack/000_mask.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert sorted(p.name for p in (root / "grass/train/good").iterdir()) == ["000.png"]


def test_image_folder_without_masks(folder_root: Path):
    assert detect_layout(folder_root) == "folder"
    raw = load_folder(folder_root)
    assert raw.class_names == ("Scratch", "dent", "stain")
    assert np.array_equal(np.bincount(raw.labels), [5, 5, 5])
    assert all(mask is None for mask in raw.masks)
    assert {Path(p).suffix for p in raw.paths} == {".png", ".jpg", ".bmp"}


def test_empty_class_folder(folder_root: Path):
    (folder_root / "burn").mkdir()
    (folder_root / "burn" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"burn.*no images"):
        scan(folder_root)


def test_neither_layout(tmp_path: Path):
    save_image(tmp_path / "flat.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="neither"):
        scan(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_corrupt_image_is_named(folder_root: Path):
    (folder_root / "dent" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"dent/9\.png"):
        load_folder(folder_root)


def test_missing_mask_is_named(mvtec_root: Path):
    (mvtec_root / "grid" / "ground_truth" / "bent" / "002_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask for .*bent/002\.png.*002_mask\.png"):
        scan(mvtec_root)


def test_mask_size_mismatch_names_both_files(mvtec_root: Path):
    save_image(mvtec_root / "bottle/ground_truth/crack/001_mask.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(DataError, match=r"001_mask\.png.*crack/001\.png"):
        load_folder(mvtec_root)


def test_defect_folder_without_images(mvtec_root: Path):
    (mvtec_root / "bottle" / "test" / "broken").mkdir()
    with pytest.raises(DataError, match=r"broken.*no images"):
        scan(mvtec_root)


def test_class_names_differing_only_by_case(folder_root: Path):
    shutil.copytree(folder_root / "dent", folder_root / "Dent")
    with pytest.raises(DataError, match="differ only by case"):
        scan(folder_root)


def test_mvtec_category_with_only_good(tmp_path: Path):
    write_category(tmp_path, "screw", {})
    with pytest.raises(DataError, match="no defect images"):
        scan(tmp_path / "screw")
