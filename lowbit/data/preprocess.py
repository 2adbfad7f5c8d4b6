"""Turn (image, mask) pairs into the classifier's input: a crop around the defect, normalized.

The classifier sees a square crop centred on the mask's bounding box, `margin` times its
longer side (at least `min_crop_fraction` of the image's shorter side, so a speck keeps some
context), reflect-padded where it runs past the border, resized to `image_size` with PIL's
antialiased bilinear filter. `prepare_image` is that rule, and the one function every path
into the model calls: the data loaders for training and evaluation, and `predict` for a mask or
box from a detector (a box (x0, y0, x1, y1) is the mask filled over [x0, x1) x [y0, y1)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from PIL import Image

# (x / 255 - mean) / std == (x - 128) / 64 exactly: an 8-bit signed input quantizer with
# scale 2^-6 then holds every pixel losslessly (code = x - 128), and inputs span [-2, 1.98].
PIXEL_MEAN, PIXEL_STD = 128.0, 64.0
NORMALIZATION: dict[str, list[float]] = {
    "mean": [PIXEL_MEAN / 255.0] * 3,
    "std": [PIXEL_STD / 255.0] * 3,
}
DEFAULT_IMAGE_SIZE = 32
DEFAULT_MARGIN = 1.5
DEFAULT_MIN_CROP_FRACTION = 0.125


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Return (top, left, bottom, right) of the mask's True pixels, end-exclusive, or None."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def box_mask(box: tuple[int, int, int, int], image_shape: tuple[int, int]) -> np.ndarray:
    """Return the bool mask of `box` = (x0, y0, x1, y1): True on rows [y0, y1), columns [x0, x1).

    Pixel-edge coordinates, end-exclusive: mask_bbox(box_mask(box)) == (y0, x0, y1, x1), so a
    box crops exactly like any mask with that bounding box.
    """
    x0, y0, x1, y1 = box
    mask = np.zeros(image_shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def crop_rule(
    margin: float = DEFAULT_MARGIN, min_crop_fraction: float = DEFAULT_MIN_CROP_FRACTION
) -> dict[str, float]:
    """Return model.json's `input.crop`: the parameters `prepare_image` cuts training crops by."""
    return {"margin": margin, "min_crop_fraction": min_crop_fraction}


def crop_rule_of(description: dict) -> dict | None:
    """Returns model.json's `input.crop` (margin, min_crop_fraction of the training crops), or
    None for a model trained on whole images. Format 1 recorded nothing: every model then was
    trained on the default mask crops unless its run said --no-crop, so the default rule is the
    safe reading (predict then asks for a mask, a box or --whole-image)."""
    entry = description.get("input", {})
    if "crop" not in entry:
        return crop_rule()
    return entry["crop"]


def reflect_indices(indices: np.ndarray, length: int) -> np.ndarray:
    """Map any integer indices into [0, length) by mirror reflection (numpy's 'reflect')."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.abs(indices) % period
    return np.where(folded >= length, period - folded, folded)


def crop_box(
    bbox: tuple[int, int, int, int],
    image_shape: tuple[int, int],
    margin: float = DEFAULT_MARGIN,
    min_crop_fraction: float = DEFAULT_MIN_CROP_FRACTION,
) -> tuple[int, int, int]:
    """Return (top, left, side) of the square crop centred on `bbox` (may leave the image)."""
    top, left, bottom, right = bbox
    longest = max(bottom - top, right - left)
    side = max(math.ceil(longest * margin), round(min_crop_fraction * min(image_shape)), 1)
    # centre in pixel-edge coordinates; the crop's centre is within half a pixel of it
    crop_top = math.floor((top + bottom - side) / 2 + 0.5)
    crop_left = math.floor((left + right - side) / 2 + 0.5)
    return crop_top, crop_left, side


def crop_to_mask(
    image: np.ndarray,
    mask: np.ndarray | None,
    margin: float = DEFAULT_MARGIN,
    min_crop_fraction: float = DEFAULT_MIN_CROP_FRACTION,
) -> np.ndarray:
    """Return the square crop of `image` centred on the mask's bounding box.

    With no mask, or an empty one, the whole image is returned.
    """
    bbox = None if mask is None else mask_bbox(mask)
    if bbox is None:
        return image
    top, left, side = crop_box(bbox, image.shape[:2], margin, min_crop_fraction)
    rows = reflect_indices(np.arange(top, top + side), image.shape[0])
    cols = reflect_indices(np.arange(left, left + side), image.shape[1])
    return image[rows[:, None], cols[None, :]]


def resize_square(image: np.ndarray, image_size: int) -> np.ndarray:
    """Return `image` (uint8 HxWx3) resized to image_size x image_size, antialiased bilinear."""
    if image.shape[:2] == (image_size, image_size):
        return np.ascontiguousarray(image)
    pil_image = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil_image.resize((image_size, image_size), Image.Resampling.BILINEAR))


def prepare_image(
    image: np.ndarray,
    mask: np.ndarray | None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    crop: bool = True,
    margin: float = DEFAULT_MARGIN,
    min_crop_fraction: float = DEFAULT_MIN_CROP_FRACTION,
) -> np.ndarray:
    """Return the uint8 [S, S, 3] model input of one (image, mask) pair: the module's rule.

    `crop=False`, no mask or an empty one: the whole image, resized.
    """
    region = crop_to_mask(image, mask, margin, min_crop_fraction) if crop else image
    return resize_square(region, image_size)


def prepare_images(
    pairs: Iterable[tuple[np.ndarray, np.ndarray | None]],
    image_size: int = DEFAULT_IMAGE_SIZE,
    crop: bool = True,
    margin: float = DEFAULT_MARGIN,
    min_crop_fraction: float = DEFAULT_MIN_CROP_FRACTION,
) -> np.ndarray:
    """Return uint8 [N, S, S, 3] model inputs from (image, mask) pairs, consumed one at a time.

    Pairs may be a generator, so full-size images need not all be in memory at once.
    """
    prepared = [
        prepare_image(image, mask, image_size, crop, margin, min_crop_fraction)
        for image, mask in pairs
    ]
    if not prepared:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack(prepared)


def to_tensor_array(images: np.ndarray) -> np.ndarray:
    """Return float32 NCHW `(x / 255 - mean) / std` (see NORMALIZATION) from uint8 NHWC."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    normalized = (images.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD  # exact in float32
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))
