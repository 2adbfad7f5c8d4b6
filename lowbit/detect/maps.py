"""Integer pieces around the memory bank: local aggregation, thresholds, masks and regions.

Every function here is exact integer (or boolean) arithmetic on numpy arrays, so the same
numbers come out of any executor that reproduces them; the stage-1 graph is checked against
`aggregate` (aggregate.py) and the memory bank's `anomaly_map`.

- `false_alarm_threshold(scores, rate)`: the smallest integer t with #(score > t) <=
  floor(rate * n): at most that many of the given (defect-free) scores lie above t.
- `upsample_nearest` / `largest_region`: the mask at image size and the box handed to stage 2.
"""

from __future__ import annotations

import math

import numpy as np


def false_alarm_threshold(scores: np.ndarray, rate: float) -> int:
    """Return the smallest integer t with #(scores > t) <= floor(rate * len(scores)).

    That t is the (a + 1)-th largest score, a = floor(rate * n): a lower t would leave a + 1
    scores above it. A part is flagged when its score exceeds t, so at most a of the given
    defect-free scores are flagged.
    """
    scores = np.sort(np.asarray(scores, dtype=np.int64).ravel())[::-1]
    if not 0 <= rate < 1 or len(scores) == 0:
        raise ValueError(f"need 0 <= rate < 1 and scores, got {rate} and {len(scores)} scores")
    allowed = math.floor(rate * len(scores))
    return int(scores[allowed])


def upsample_nearest(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return maps [..., h, w] at height x width: pixel (y, x) takes cell (y // s, x // s).

    s = height // h (the trunk's stride); pixels past the last whole cell (a size the pooling
    floored) take the last row or column.
    """
    h, w = maps.shape[-2:]
    rows = np.minimum(np.arange(height) // (height // h), h - 1)
    cols = np.minimum(np.arange(width) // (width // w), w - 1)
    return maps[..., rows[:, None], cols[None, :]]


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (int32 labels [H, W], count) of the 4-connected regions of a bool mask.

    Labels 1..count in raster order of each region's first pixel, 0 for the background: the
    numbering of scipy.ndimage.label with its default (cross) structure.
    """
    mask = np.asarray(mask, dtype=bool)
    labels = np.zeros(mask.shape, dtype=np.int32)
    height, width = mask.shape
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        stack = [start]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels, count


def largest_region(mask: np.ndarray) -> np.ndarray | None:
    """Return the bool mask of the largest 4-connected region of `mask` (the first in raster
    order among equals), or None when the mask is empty."""
    labels, count = label_regions(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels == int(np.argmax(sizes)) + 1
