"""Real texture photographs that the built-in defect generator paints on.

The photographs ship inside scikit-image (`skimage/data/*.png`), so nothing is downloaded.
Each texture is one *category*, like an MVTec AD category: brick, grass and gravel are the
three true textures bundled with skimage 0.26 (`moon`, `camera` and the rest are scenes with
their own blob-like features, which would look like defects). The grayscale photographs are
tinted per category so that colour carries information, as on a real line.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

# category -> RGB gain applied to the grayscale photograph
CATEGORY_TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.74, 0.60),
    "grass": (0.72, 1.0, 0.58),
    "gravel": (0.96, 0.90, 0.80),
}
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_TINTS)


@functools.lru_cache(maxsize=len(CATEGORIES))
def load_texture(category: str) -> np.ndarray:
    """Return the tinted texture photograph of `category` as uint8 HxWx3 (read-only)."""
    import skimage.data  # imported here: loading skimage costs ~0.3 s and only synth needs it

    if category not in CATEGORY_TINTS:
        raise KeyError(f"unknown texture category {category!r}; choose from {CATEGORIES}")
    gray = getattr(skimage.data, category)().astype(np.float32)
    rgb = gray[..., None] * np.asarray(CATEGORY_TINTS[category], dtype=np.float32)
    texture = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    texture.setflags(write=False)
    return texture


def random_crop(rng: np.random.Generator, texture: np.ndarray, size: int) -> np.ndarray:
    """Return a clean uint8 size x size x 3 patch: random scale, position, rotation and gain.

    The patch is cut at 1-2x `size` and resized down, so the texture's scale varies like the
    working distance of a camera does.
    """
    height, width = texture.shape[:2]
    side = int(round(size * rng.uniform(1.0, 2.0)))
    side = min(side, height, width)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    patch = texture[top : top + side, left : left + side]
    patch = np.rot90(patch, k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if side != size:
        image = Image.fromarray(np.ascontiguousarray(patch))
        patch = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    gain = rng.uniform(0.8, 1.15)
    offset = rng.uniform(-12.0, 12.0)
    return np.clip(np.rint(patch.astype(np.float32) * gain + offset), 0, 255).astype(np.uint8)
