"""Alpha maps for painting defects: soft blobs, antialiased strokes and random walks.

Every alpha map here has compact support: it is exactly 0 beyond the shape's soft edge, so a
defect's mask (`alpha > 0`) covers every pixel the defect changes. Coordinates are pixel
centres, (row, col) as float32.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the (rows, cols) coordinate grids of a size x size image, float32."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def smoothstep(t: np.ndarray) -> np.ndarray:
    """Return 3t^2 - 2t^3 on t clipped to [0, 1]: 0 below 0, 1 above 1, smooth between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_blob(
    rng: np.random.Generator,
    size: int,
    center: tuple[float, float],
    radius: float,
    *,
    aspect: float = 1.0,
    edge_px: float = 2.0,
    irregularity: float = 0.0,
) -> np.ndarray:
    """Return the alpha of an irregular ellipse: 1 inside, a smooth ramp `edge_px` wide, 0 out.

    The outline is r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k)) for k = 2..4, with
    a_k up to `irregularity / k`; `aspect` squashes the minor axis at a random orientation.
    """
    rows, cols = pixel_grid(size)
    d_row, d_col = rows - center[0], cols - center[1]
    angle = rng.uniform(0.0, np.pi)
    along = d_col * np.cos(angle) + d_row * np.sin(angle)
    across = (-d_col * np.sin(angle) + d_row * np.cos(angle)) / aspect
    theta = np.arctan2(across, along)
    outline = np.ones_like(theta)
    for k in (2, 3, 4):
        amplitude = rng.uniform(0.0, irregularity / k)
        outline += amplitude * np.cos(k * theta + rng.uniform(0.0, 2 * np.pi))
    distance_px = np.hypot(along, across) - radius * outline
    # distance_px < 0 inside; the ramp ends exactly at the outline, so support is compact
    return smoothstep(-distance_px / max(edge_px, 1e-3)).astype(np.float32)


def polyline_distance(size: int, points: np.ndarray) -> np.ndarray:
    """Return each pixel's distance to the polyline through `points` (n x 2, row/col)."""
    rows, cols = pixel_grid(size)
    starts, ends = points[:-1, :, None, None], points[1:, :, None, None]
    direction = ends - starts
    length_sq = np.maximum((direction**2).sum(axis=1), 1e-6)
    t = ((rows - starts[:, 0]) * direction[:, 0] + (cols - starts[:, 1]) * direction[:, 1]) / (
        length_sq
    )
    t = np.clip(t, 0.0, 1.0)
    near_row = starts[:, 0] + t * direction[:, 0]
    near_col = starts[:, 1] + t * direction[:, 1]
    return np.hypot(rows - near_row, cols - near_col).min(axis=0)


def stroke(distance: np.ndarray, width: float) -> np.ndarray:
    """Return the antialiased alpha of a stroke `width` px wide around distance 0."""
    return np.clip(width / 2.0 + 0.5 - distance, 0.0, 1.0).astype(np.float32)


def random_walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    steps: int,
    step_px: tuple[float, float],
    turn: float,
) -> np.ndarray:
    """Return steps + 1 points of a walk whose heading changes by up to +-`turn` rad a step."""
    points = [np.asarray(start, dtype=np.float32)]
    for _ in range(steps):
        heading += rng.uniform(-turn, turn)
        length = rng.uniform(*step_px)
        step = np.array([np.sin(heading), np.cos(heading)], dtype=np.float32) * length
        points.append(points[-1] + step)
    return np.stack(points)


def bowed_segment(
    center: tuple[float, float], length: float, angle: float, bow: float, n_points: int = 6
) -> np.ndarray:
    """Return points of a segment through `center`, bent sideways by `bow` px at the middle."""
    t = np.linspace(-0.5, 0.5, n_points, dtype=np.float32)
    along = t * length
    sideways = bow * (1.0 - 4.0 * t**2)
    rows = center[0] + along * np.sin(angle) + sideways * np.cos(angle)
    cols = center[1] + along * np.cos(angle) - sideways * np.sin(angle)
    return np.stack([rows, cols], axis=1)


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Return `mask` grown by `radius` px in the 8-neighbourhood (square structuring element)."""
    grown = mask.copy()
    for _ in range(radius):
        padded = np.pad(grown, 1)
        rows, cols = grown.shape
        grown = np.zeros_like(grown)
        for d_row in range(3):
            for d_col in range(3):
                grown |= padded[d_row : d_row + rows, d_col : d_col + cols]
    return grown
