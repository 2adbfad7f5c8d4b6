"""Read images and masks from disk as uint8 RGB and bool, whatever their PNG/JPEG/BMP mode.

Every failure is a DataError naming the file. Sizes are checked from the header before any
pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from lowbit.errors import DataError

MAX_PIXELS = 40_000_000  # refuse larger images: 40 MP is ~120 MB of RGB, far past any line camera
# Pillow raises these for truncated, corrupt or unsupported files
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _open(path: Path) -> Image.Image:
    """Return the opened and decoded PIL image, after a header-only size check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_PIXELS:
                image.close()
                raise DataError(
                    f"{path}: {width}x{height} image exceeds the {MAX_PIXELS:,}-pixel limit"
                )
            try:
                image.load()
            except BaseException:
                image.close()
                raise
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found") from error
    except _PIL_ERRORS as error:
        raise DataError(f"{path}: cannot read image ({error})") from error
    return image


def _wide_to_uint8(pixels: np.ndarray, full_scale: float) -> np.ndarray:
    """Return integer or float pixels rescaled from [0, full_scale] to uint8, rounded."""
    scaled = np.clip(pixels.astype(np.float64), 0, full_scale) * (255.0 / full_scale)
    return np.rint(scaled).astype(np.uint8)


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """Return uint8 HxWx3 from any PIL mode; 16-bit and float gray are rescaled, alpha dropped."""
    if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image)
        if image.mode == "F":
            full_scale = 1.0 if float(np.nanmax(pixels, initial=0)) <= 1.0 else 255.0
            gray = _wide_to_uint8(np.nan_to_num(pixels), full_scale)
        else:
            # "I;16*" is 16-bit; Pillow also opens 16-bit PNG as "I", so assume 16 bits there
            gray = _wide_to_uint8(pixels, 65535.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def read_image(path: Path) -> np.ndarray:
    """Return the image at `path` as uint8 HxWx3."""
    with _open(Path(path)) as image:
        return image_to_rgb(image)


def read_mask(path: Path) -> np.ndarray:
    """Return the mask at `path` as bool HxW: True where any channel is non-zero."""
    with _open(Path(path)) as image:
        if image.mode.startswith("I") or image.mode == "F":
            return np.asarray(image) > 0
        if image.mode in ("RGBA", "LA", "PA"):
            image = image.convert("RGB")
        pixels = np.asarray(image.convert("L") if image.mode == "P" else image)
        return pixels.reshape(pixels.shape[0], pixels.shape[1], -1).max(axis=2) > 0


def read_pair(image_path: Path, mask_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (image, mask or None); a mask whose size differs from the image's is an error."""
    image = read_image(image_path)
    if mask_path is None:
        return image, None
    mask = read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return image, mask
