"""The bench plots exist and are real images; the Pareto front is the non-dominated set."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lowbit.bench.plots import pareto_front

PLOTS = ["accuracy_vs_bits.png", "ood_roc.png", "confusion_matrix.png", "layer_bits.png"]


def test_plots_are_nonempty_pngs(tiny_sweep):
    _, out, _ = tiny_sweep
    for name in PLOTS:
        path = out / name
        assert path.stat().st_size > 0, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, f"{name} is blank"


def test_pareto_front():
    # (bits, accuracy): B dominates C (fewer bits, higher accuracy); D ties A on bits, is worse
    points = [(100, 0.9), (10, 0.8), (20, 0.7), (100, 0.85), (5, 0.5)]
    assert pareto_front(points) == [4, 1, 0]
    assert pareto_front([(1, 0.5), (1, 0.5)]) == [0, 1]  # equal points dominate neither
