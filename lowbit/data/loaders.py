"""Find the labelled images of a data folder: MVTec AD layout or a plain image folder.

MVTec AD: `<root>/<category>/test/<defect>/NNN.png` with masks at
`<root>/<category>/ground_truth/<defect>/NNN_mask.png`; `root` may also be one category.
Classes are the defect types (`good` is skipped); one name in several categories is one class.
Image folder: `<root>/<class>/*.png|jpg|jpeg|bmp|tif`, no masks (the whole image is used).
Scanning reads no pixels; `load_folder` reads them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.data.images import read_pair
from lowbit.data.sets import RawSet
from lowbit.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"  # MVTec AD's defect-free folder: not a defect type


@dataclass(frozen=True)
class Record:
    """One labelled image on disk, with its mask file if the layout has masks."""

    image_path: Path
    mask_path: Path | None
    class_name: str


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as error:  # unreadable folder (permissions, I/O error)
        raise DataError(f"{folder}: cannot list folder ({error.strerror or error})") from None


def subdirs(folder: Path) -> list[Path]:
    """Return the sorted visible subfolders of `folder`."""
    return sorted(p for p in _entries(folder) if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """Return the sorted visible image files of `folder` (IMAGE_SUFFIXES, any case)."""
    images = [
        p
        for p in _entries(folder)
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    for path in images:
        if path.is_symlink() and not path.exists():  # would otherwise vanish from the data set
            raise DataError(f"{path}: broken symbolic link (its target does not exist)")
    return sorted(p for p in images if p.is_file())


def is_mvtec_category(folder: Path) -> bool:
    """Return whether `folder` looks like one MVTec AD category (test/<defect>/ + train or gt)."""
    test = folder / "test"
    has_partner = (folder / "ground_truth").is_dir() or (folder / "train").is_dir()
    return test.is_dir() and has_partner and bool(subdirs(test))


def detect_layout(root: Path) -> str:
    """Return "mvtec" or "folder" for the data folder `root`; anything else is a DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    children = subdirs(root)
    if is_mvtec_category(root) or any(is_mvtec_category(child) for child in children):
        return "mvtec"
    if children:
        return "folder"
    raise DataError(
        f"{root} is neither an MVTec AD tree (<category>/test/<defect>/*.png) nor an image "
        "folder (<class>/*.png): it has no subfolders"
    )


def find_mask(category: Path, defect: str, image_path: Path) -> Path:
    """Return the ground-truth mask of `image_path`: `<stem>_mask.png`, or `<stem>.png`."""
    folder = category / "ground_truth" / defect
    for name in (f"{image_path.stem}_mask.png", f"{image_path.stem}.png"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"no mask for {image_path}: expected {folder / (image_path.stem + '_mask.png')}"
    )


def scan_mvtec_category(category: Path, prefix_category: bool = False) -> list[Record]:
    """Return the defect images of one MVTec AD category with their masks."""
    records = []
    for defect_dir in subdirs(category / "test"):
        if defect_dir.name == GOOD:
            continue
        images = image_files(defect_dir)
        if not images:
            raise DataError(
                f"defect folder {defect_dir} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        name = f"{category.name}/{defect_dir.name}" if prefix_category else defect_dir.name
        records += [Record(p, find_mask(category, defect_dir.name, p), name) for p in images]
    return records


def scan_good(category: Path, split: str = "train") -> list[Path]:
    """Return the defect-free images of `<category>/<split>/good`, sorted by name."""
    folder = Path(category) / split / GOOD
    if not folder.is_dir():
        raise DataError(f"{category}: no {split}/{GOOD} folder of defect-free images")
    images = image_files(folder)
    if not images:
        raise DataError(f"{folder}: no defect-free images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def scan_mvtec(root: Path, prefix_category: bool = False) -> list[Record]:
    """Return the defect images of an MVTec AD tree (or of a single category folder)."""
    root = Path(root)
    if is_mvtec_category(root):
        categories = [root]
    else:
        categories = [child for child in subdirs(root) if is_mvtec_category(child)]
        skipped = sorted({child.name for child in subdirs(root)} - {c.name for c in categories})
        if skipped:
            log.warning("%s: skipping folders that are not MVTec AD categories: %s", root, skipped)
    records = [r for category in categories for r in scan_mvtec_category(category, prefix_category)]
    if not records:
        raise DataError(f"{root}: MVTec AD tree with no defect images (only '{GOOD}' or empty)")
    return records


def scan_image_folder(root: Path) -> list[Record]:
    """Return the images of `<root>/<class>/*`, one class per subfolder, without masks."""
    root = Path(root)
    records = []
    for class_dir in subdirs(root):
        images = image_files(class_dir)
        if not images:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
        records += [Record(p, None, class_dir.name) for p in images]
    if not records:
        raise DataError(f"{root}: no class folders with images")
    return records


def scan(root: Path, layout: str = "auto", prefix_category: bool = False) -> list[Record]:
    """Return the records of `root` in the given layout ("auto", "mvtec" or "folder")."""
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "mvtec":
        records = scan_mvtec(root, prefix_category)
    elif layout == "folder":
        records = scan_image_folder(root)
    else:
        raise DataError(f"unknown layout {layout!r} for {root}: use auto, mvtec or folder")
    check_class_names(root, class_names_of(records))
    return records


def class_names_of(records: Sequence[Record]) -> tuple[str, ...]:
    """Return the sorted distinct class names of `records`."""
    return tuple(sorted({r.class_name for r in records}))


def check_class_names(root: Path, class_names: Sequence[str]) -> None:
    """Refuse class names that differ only by letter case: they are almost surely one class."""
    seen: dict[str, str] = {}
    for name in class_names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise DataError(
                f"{root}: class folders {other!r} and {name!r} differ only by case; rename one"
            )


def labels_of(records: Sequence[Record], class_names: Sequence[str]) -> np.ndarray:
    """Return int64 labels of `records` as indices into `class_names`."""
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[r.class_name] for r in records], dtype=np.int64)


def load_folder(root: Path, layout: str = "auto", prefix_category: bool = False) -> RawSet:
    """Return every image of `root` at full resolution, with masks where the layout has them.

    Holds all images in memory; `lowbit.data.load_splits` streams them instead.
    """
    records = scan(root, layout, prefix_category)
    class_names = class_names_of(records)
    pairs = [read_pair(r.image_path, r.mask_path) for r in records]
    return RawSet(
        images=[image for image, _ in pairs],
        masks=[mask for _, mask in pairs],
        labels=labels_of(records, class_names),
        class_names=class_names,
        paths=[str(r.image_path) for r in records],
    )
