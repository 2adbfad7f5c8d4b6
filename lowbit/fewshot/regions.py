"""Where the defect lies in each image given to `predict`: a mask, a box, or the whole image.

A box is (x0, y0, x1, y1) in pixels: x along columns, y along rows, from the image's top-left
corner, end-exclusive (a box 0,0,W,H covers a W x H image). It means the mask filled over
[x0, x1) x [y0, y1) (lowbit.data.preprocess.box_mask), so a box equal to a mask's bounding box
gives exactly that mask's crop. Fractional coordinates are rounded outward to whole pixels: the
smallest pixel box that holds the given one.

Many images take their masks or boxes from a list file, one entry per image in the images'
order: `.json` (a list of mask paths, or of [x0, y0, x1, y1]) or `.csv` (one mask path, or
x0,y0,x1,y1, per row; a header row is skipped). Mask paths in a list file are relative to it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.data.images import read_image, read_mask
from lowbit.data.preprocess import box_mask, mask_bbox
from lowbit.errors import ConfigError, DataError

LIST_SUFFIXES = (".json", ".csv")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Region:
    """The defect in one image: a mask (file or bool array), a box, or neither (whole image)."""

    mask: Path | np.ndarray | None = None
    box: Box | None = None

    def describe(self) -> str:
        if self.box is not None:
            return "box " + ",".join(map(str, self.box))
        if isinstance(self.mask, Path):
            return f"mask {self.mask}"
        return "mask array" if self.mask is not None else "whole image"


def pixel_box(values: Sequence[object], where: str) -> Box:
    """Returns (x0, y0, x1, y1) as whole pixels, rounded outward; ConfigError names `where`."""
    try:
        numbers = [float(value) for value in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise ConfigError(f"{where}: a box is four numbers x0,y0,x1,y1 (pixels), got {values!r}")
    x0, y0, x1, y1 = numbers
    return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


def _is_list_file(value: str) -> bool:
    return Path(value).suffix.lower() in LIST_SUFFIXES


def _list_entries(path: Path) -> list:
    """Returns the entries of a .json list or the rows of a .csv file (header row dropped)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read list file ({error})") from None
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a JSON list, one entry per image")
        return entries
    rows = [[cell.strip() for cell in row] for row in csv.reader(text.splitlines())]
    rows = [row for row in rows if any(row)]
    if rows and not _numeric(rows[0][0]) and not Path(rows[0][0]).suffix:
        rows = rows[1:]  # a header such as "x0,y0,x1,y1" or "mask"
    return rows


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def boxes_from_args(values: Sequence[str]) -> list[Box]:
    """Returns the boxes of `--box` values: each "x0,y0,x1,y1" or a .json/.csv list file."""
    boxes = []
    for value in values:
        if _is_list_file(value):
            path = Path(value)
            for index, entry in enumerate(_list_entries(path)):
                values = entry if isinstance(entry, list) else [entry]
                boxes.append(pixel_box(values, f"{path}[{index}]"))
        else:
            boxes.append(pixel_box(value.split(","), f"--box {value}"))
    return boxes


def masks_from_args(values: Sequence[str]) -> list[Path]:
    """Returns the mask paths of `--mask` values: each a mask image or a .json/.csv list file."""
    masks = []
    for value in values:
        path = Path(value)
        if not _is_list_file(value):
            masks.append(path)
            continue
        for index, entry in enumerate(_list_entries(path)):
            name = entry[0] if isinstance(entry, list) and entry else entry
            if not isinstance(name, str) or not name:
                raise DataError(f"{path}[{index}]: expected a mask file path, got {entry!r}")
            masks.append(path.parent / name)
    return masks


def regions_for(
    count: int, masks: Sequence | None = None, boxes: Sequence | None = None
) -> list[Region]:
    """Returns one Region per image from per-image masks or boxes (not both), or whole images."""
    if masks is not None and boxes is not None:
        raise ConfigError("give either masks (--mask) or boxes (--box), not both")
    given, kind = (masks, "mask") if masks is not None else (boxes, "box")
    if given is None:
        return [Region() for _ in range(count)]
    if len(given) != count:
        raise ConfigError(
            f"{count} image(s) but {len(given)} {kind}(s): give one --{kind} per image, "
            "in the images' order"
        )
    if kind == "box":
        return [Region(box=pixel_box(box, f"box {i}")) for i, box in enumerate(given)]
    return [Region(mask=m if isinstance(m, np.ndarray) else Path(m)) for m in given]


def read_region(
    image: Path | np.ndarray, region: Region, name: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (uint8 HxWx3 image, bool mask or None) for one image; DataError for a mask of
    another size, an empty mask, or a box not inside the image."""
    pixels = read_image(image) if isinstance(image, Path) else _check_image(image, name)
    height, width = pixels.shape[:2]
    if region.box is not None:
        x0, y0, x1, y1 = region.box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DataError(
                f"{region.describe()} of {name}: not inside the {width}x{height} image "
                f"(need 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})"
            )
        return pixels, box_mask(region.box, (height, width))
    if region.mask is None:
        return pixels, None
    where = region.mask if isinstance(region.mask, Path) else "mask array"
    mask = read_mask(region.mask) if isinstance(region.mask, Path) else np.asarray(region.mask)
    if mask.shape != (height, width):
        size = "x".join(map(str, mask.shape[::-1]))
        raise DataError(f"{where} is {size} but image {name} is {width}x{height}")
    mask = mask.astype(bool)
    if mask_bbox(mask) is None:
        raise DataError(f"{where}: empty mask (no non-zero pixel) for {name}: nothing to crop")
    return pixels, mask


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"{name}: expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}"
        )
    return image


def region_box(mask: np.ndarray | None) -> list[int] | None:
    """Returns [x0, y0, x1, y1] of a mask's bounding box (None for no mask)."""
    bbox = None if mask is None else mask_bbox(mask)
    if bbox is None:
        return None
    top, left, bottom, right = bbox
    return [left, top, right, bottom]
