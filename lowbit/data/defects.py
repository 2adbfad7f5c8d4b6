"""The ten built-in defect painters, one small function per defect type.

A painter takes a clean float32 image (HxWx3 in [0, 1]) and returns the painted image and the
support alpha (HxW, exactly 0 wherever the image is unchanged). Sizes are written in pixels of
a 64 px image and scaled with the image. Confusable pairs are deliberate: scratch vs crack vs
cut (thin lines), stain vs discoloration vs burn (soft blobs), hole vs dent (small discs),
fold vs scratch/dent (a crease: light and shadow either side of a line).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lowbit.data.shapes import (
    bowed_segment,
    pixel_grid,
    polyline_distance,
    random_walk,
    smoothstep,
    soft_blob,
    stroke,
)

Painter = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma weights


def blend(image: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Return image + alpha * (target - image), alpha broadcast over channels."""
    return image + alpha[..., None] * (target - image)


def _place(rng: np.random.Generator, size: int, half_extent: float) -> tuple[float, float]:
    """Return a random centre where the default crop (1.5x the defect) stays in the image.

    A crop that leaves the image is reflect-padded, which mirrors the defect; keeping it inside
    keeps the built-in crops free of that artefact. Defects too big to fit are centred.
    """
    pad = min(1.5 * half_extent + 1.0, (size - 1) / 2)
    return float(rng.uniform(pad, size - 1 - pad)), float(rng.uniform(pad, size - 1 - pad))


def _brighten(image: np.ndarray, amount: float) -> np.ndarray:
    return image + (1.0 - image) * amount


def scratch(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin, nearly straight line, brighter (usually) or darker than the surface."""
    size, u = image.shape[0], image.shape[0] / 64
    length = rng.uniform(16, 40) * u
    center = _place(rng, size, length / 2)
    points = bowed_segment(center, length, rng.uniform(0, np.pi), rng.uniform(-3, 3) * u)
    alpha = stroke(polyline_distance(size, points), rng.uniform(0.6, 1.4) * u)
    alpha *= rng.uniform(0.6, 1.0)
    if rng.random() < 0.65:
        target = _brighten(image, rng.uniform(0.35, 0.8))
    else:
        target = image * rng.uniform(0.25, 0.6)
    return blend(image, target, alpha), alpha


def crack(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged polyline running both ways from a point, with one or two branches."""
    size, u = image.shape[0], image.shape[0] / 64
    heading, step_px = rng.uniform(0, 2 * np.pi), (3 * u, 5.5 * u)
    halves = [
        random_walk(rng, (0.0, 0.0), heading + flip, int(rng.integers(2, 5)), step_px, 0.8)
        for flip in (0.0, np.pi)
    ]
    main = np.concatenate([halves[0][::-1], halves[1][1:]])
    branches = []
    for _ in range(int(rng.integers(1, 3))):
        fork = main[int(rng.integers(1, len(main) - 1))]
        branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.3)
        steps = int(rng.integers(2, 4))
        branches.append(random_walk(rng, tuple(fork), branch_heading, steps, step_px, 0.6))
    # the walks were drawn around (0, 0): move their bounding box to a placed centre
    every = np.concatenate([main, *branches])
    low, high = every.min(axis=0), every.max(axis=0)
    offset = np.asarray(_place(rng, size, float((high - low).max()) / 2)) - (low + high) / 2
    width = rng.uniform(0.8, 1.8) * u
    alpha = stroke(polyline_distance(size, main + offset), width)
    for branch in branches:
        branch_alpha = stroke(polyline_distance(size, branch + offset), width * 0.7)
        alpha = np.maximum(alpha, branch_alpha)
    target = image * rng.uniform(0.05, 0.3)
    return blend(image, target, alpha), alpha


def cut(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A straight, clean-edged dark gap with a bright lip along one side."""
    size, u = image.shape[0], image.shape[0] / 64
    length, width = rng.uniform(12, 32) * u, rng.uniform(1.6, 3.2) * u
    center, angle = _place(rng, size, length / 2 + width), rng.uniform(0, np.pi)
    gap = bowed_segment(center, length, angle, 0.0, n_points=2)
    side = rng.choice([-1.0, 1.0]) * (width / 2 + 0.9 * u)
    lip = gap + side * np.array([np.cos(angle), -np.sin(angle)], dtype=np.float32)
    lip_alpha = stroke(polyline_distance(size, lip), 1.0 * u) * rng.uniform(0.5, 0.9)
    painted = blend(image, _brighten(image, 0.6), lip_alpha)
    gap_alpha = stroke(polyline_distance(size, gap), width)
    painted = blend(painted, image * rng.uniform(0.03, 0.15), gap_alpha)
    return painted, np.maximum(lip_alpha, gap_alpha)


def stain(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth darker blob with a soft edge; the texture shows through."""
    size, u = image.shape[0], image.shape[0] / 64
    radius = rng.uniform(6, 15) * u
    alpha = soft_blob(
        rng,
        size,
        _place(rng, size, radius * 1.2),
        radius,
        aspect=rng.uniform(0.6, 1.0),
        edge_px=radius * rng.uniform(0.4, 0.8),
        irregularity=0.3,
    )
    tint = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.75, 1.0)], dtype=np.float32)
    target = image * rng.uniform(0.35, 0.65) * tint
    return blend(image, target, alpha * rng.uniform(0.8, 1.0)), alpha


def discoloration(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A soft region whose hue shifts while its luma stays (no darkening)."""
    size, u = image.shape[0], image.shape[0] / 64
    radius = rng.uniform(6, 16) * u
    alpha = soft_blob(
        rng,
        size,
        _place(rng, size, radius * 1.25),
        radius,
        aspect=rng.uniform(0.6, 1.0),
        edge_px=radius * rng.uniform(0.3, 0.7),
        irregularity=0.4,
    )
    shift = rng.normal(size=3).astype(np.float32)
    shift -= LUMA @ shift  # LUMA sums to 1, so the shift now has zero luma
    shift *= rng.uniform(0.10, 0.22) / max(float(np.abs(shift).max()), 1e-6)
    return blend(image, image + shift, alpha), alpha


def hole(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small dark disc with a sharp edge and a highlight on the rim's lit side."""
    size, u = image.shape[0], image.shape[0] / 64
    radius = rng.uniform(2.5, 7) * u
    center, light = _place(rng, size, radius + 2 * u), rng.uniform(0, 2 * np.pi)
    rows, cols = pixel_grid(size)
    d_row, d_col = rows - center[0], cols - center[1]
    distance = np.hypot(d_row, d_col)
    rim_px = rng.uniform(1.0, 2.0) * u
    facing = np.clip(
        (d_col * np.cos(light) + d_row * np.sin(light)) / np.maximum(distance, 1), 0, 1
    )
    rim = stroke(np.abs(distance - radius - rim_px / 2), rim_px) * facing
    painted = blend(image, _brighten(image, rng.uniform(0.3, 0.6)), rim)
    disc = smoothstep((radius - distance) / (0.8 * u))
    depth = rng.uniform(0.02, 0.12) + 0.08 * (1 - distance / radius)
    painted = blend(painted, image * 0.1 + depth[..., None], disc)
    return painted, np.maximum(rim, disc).astype(np.float32)


def dent(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A soft disc shaded light on one side and dark on the other, like a pressed-in bowl."""
    size, u = image.shape[0], image.shape[0] / 64
    radius = rng.uniform(5, 13) * u
    center = _place(rng, size, radius * 1.05)
    alpha = soft_blob(
        rng,
        size,
        center,
        radius,
        aspect=rng.uniform(0.7, 1.0),
        edge_px=radius * rng.uniform(0.3, 0.6),
        irregularity=0.1,
    )
    light = rng.uniform(0, 2 * np.pi)
    rows, cols = pixel_grid(size)
    slope = ((cols - center[1]) * np.cos(light) + (rows - center[0]) * np.sin(light)) / radius
    target = image * (1.0 + rng.uniform(0.35, 0.7) * np.clip(slope, -1, 1))[..., None]
    return blend(image, target, alpha), alpha


def contamination(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Several small specks (dark or coloured) scattered around a point."""
    size, u = image.shape[0], image.shape[0] / 64
    spread = rng.uniform(4, 12) * u
    center = _place(rng, size, spread)
    rows, cols = pixel_grid(size)
    painted, support = image, np.zeros(image.shape[:2], dtype=np.float32)
    for index in range(int(rng.integers(3, 10))):
        offset = rng.normal(size=2) * spread / 2 if index else np.zeros(2)
        speck_row = np.clip(center[0] + offset[0], 0, size - 1)
        speck_col = np.clip(center[1] + offset[1], 0, size - 1)
        radius = rng.uniform(0.7, 2.2) * u
        alpha = smoothstep((radius - np.hypot(rows - speck_row, cols - speck_col)) / (0.8 * u))
        if rng.random() < 0.5:
            target = image * rng.uniform(0.05, 0.4)
        else:
            target = np.broadcast_to(rng.uniform(0.05, 0.7, size=3).astype(np.float32), image.shape)
        painted = blend(painted, target, alpha * rng.uniform(0.7, 1.0))
        support = np.maximum(support, alpha)
    return painted, support


def burn(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ragged charred core inside a brown-orange scorched halo."""
    size, u = image.shape[0], image.shape[0] / 64
    radius = rng.uniform(6, 14) * u
    center = _place(rng, size, radius * 1.3)
    halo = soft_blob(rng, size, center, radius, edge_px=radius * 0.5, irregularity=0.5)
    scorch = np.array([0.85, rng.uniform(0.45, 0.6), rng.uniform(0.2, 0.35)], dtype=np.float32)
    painted = blend(image, image * scorch, halo)
    core = soft_blob(
        rng, size, center, radius * rng.uniform(0.35, 0.6), edge_px=2 * u, irregularity=0.6
    )
    char = image * 0.15 + np.array([0.06, 0.035, 0.02], dtype=np.float32)
    return blend(painted, char, core), np.maximum(halo, core)


def fold(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A long crease: a light band on one side of a line and a shadow on the other."""
    size, u = image.shape[0], image.shape[0] / 64
    half_length, half_width = rng.uniform(12, 22) * u, rng.uniform(1.5, 3.5) * u
    center, angle = _place(rng, size, half_length), rng.uniform(0, np.pi)
    rows, cols = pixel_grid(size)
    along = (cols - center[1]) * np.cos(angle) + (rows - center[0]) * np.sin(angle)
    across = (-(cols - center[1]) * np.sin(angle) + (rows - center[0]) * np.cos(angle)) / half_width
    band = np.abs(across) < 1
    # u (1 - u^2)^2 peaks at +-0.286 (u = 1/sqrt 5); 3.5x brings the peaks near +-1
    profile = np.where(band, 3.5 * across * (1 - across**2) ** 2, 0.0)
    ends = smoothstep((half_length - np.abs(along)) / (6 * u))
    shading = 1.0 + rng.uniform(0.4, 0.8) * profile * ends
    alpha = (band * ends).astype(np.float32)
    return blend(image, image * shading[..., None], alpha), alpha


PAINTERS: dict[str, Painter] = {
    "scratch": scratch,
    "crack": crack,
    "cut": cut,
    "stain": stain,
    "discoloration": discoloration,
    "hole": hole,
    "dent": dent,
    "contamination": contamination,
    "burn": burn,
    "fold": fold,
}
