"""Dihedral views of a square crop, and feature codes summed over them.

A defect crop has no preferred orientation: a scratch turned by 90 degrees or mirrored is still a
scratch. The unknown-type score can therefore read the backbone's features of a crop's eight
dihedral views (the square's symmetries) summed, instead of those of the crop alone: the sum is
what the crop's features have in common under every orientation, and the leave-one-known-type-out
folds chose it over the single view (docs/unknown_types.md). For a quantized backbone every view's
features are exact integer codes, so their sum is an exact int64 array too, the same in the
fake-quant model, the integer runtime and the C target; the score is then the same float64
function of that array as for one view.

View v (0..7) of images [N, C, H, W] with H = W: bit 0 flips left-right, bit 1 flips up-down,
bit 2 transposes (after the flips). View 0 is the image itself; views 0..V-1 are used for V views,
so V = 2 adds the mirror image, V = 4 every flip, V = 8 the transposes too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAX_VIEWS = 8
VIEW_COUNTS = (1, 2, 4, 8)


def check_views(views: object, where: str = "views") -> int:
    """Returns `views` as an int; ValueError naming `where` unless it is 1, 2, 4 or 8."""
    if isinstance(views, bool) or not isinstance(views, int | np.integer):
        raise ValueError(f"{where}: {views!r} is not a view count (1, 2, 4 or 8)")
    if int(views) not in VIEW_COUNTS:
        raise ValueError(f"{where}: {views} views; choose 1, 2, 4 or 8")
    return int(views)


def dihedral_view(x: np.ndarray, view: int) -> np.ndarray:
    """Returns view `view` (0..7) of images [N, C, H, W]: see the module docstring."""
    if not 0 <= view < MAX_VIEWS:
        raise ValueError(f"view {view} is not one of 0..{MAX_VIEWS - 1}")
    if view & 4 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"views that transpose need square images, not {x.shape[-2:]}")
    if view & 1:
        x = x[..., ::-1]
    if view & 2:
        x = x[..., ::-1, :]
    if view & 4:
        x = np.swapaxes(x, -1, -2)
    return np.ascontiguousarray(x)


def stack_views(x: np.ndarray, views: int) -> np.ndarray:
    """Returns images [V * N, C, H, W]: view 0 of every image, then view 1 of every image, ..."""
    if views == 1:
        return x
    return np.concatenate([dihedral_view(x, view) for view in range(views)])


def sum_views(features: np.ndarray, views: int) -> np.ndarray:
    """Returns [N, F] rows summed over the V blocks of `features` [V * N, F] (stack_views order):
    int64 for integer codes (exact), float64 for float features (summed in view order)."""
    features = np.asarray(features)
    if len(features) % views:
        raise ValueError(f"{len(features)} feature rows are not {views} views of equal size")
    dtype = np.int64 if np.issubdtype(features.dtype, np.integer) else np.float64
    blocks = features.astype(dtype).reshape(views, -1, *features.shape[1:])
    total = blocks[0].copy()
    for block in blocks[1:]:  # one order everywhere: view 0 + view 1 + ... (float features)
        total += block
    return total


def view_outputs(
    outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    views: int,
    first: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (logits of view 0, features summed over `views` views) of images x, where
    `outputs(images)` -> (logits, features) is one executor (fake-quant model, runtime);
    `first`: its (logits, features) of x itself when the caller already has them."""
    logits, features = first if first is not None else outputs(x)
    if views == 1:
        return logits, features
    dtype = np.int64 if np.issubdtype(features.dtype, np.integer) else np.float64
    total = features.astype(dtype)
    for view in range(1, views):
        total = total + outputs(dihedral_view(x, view))[1].astype(dtype)
    return logits, total
