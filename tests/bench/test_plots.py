"""The bench plots exist and are real images; the Pareto front is the non-dominated set."""

from __future__ import annotations

import numpy as np
import pytest
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


# the sweep's 7 recipes: deployed bits and accuracy of README's built-in sweep; w4a4 and w2a4
# (95.4 / 95.5 %) and w2a2 and w1a2 (94.4 / 94.2 %) sit close enough for labels to collide
SWEEP = {
    "fp32": (3_676_160, 0.957),
    "w8a8": (2_351_104, 0.962),
    "w4a4": (534_016, 0.954),
    "w2a4": (308_992, 0.955),
    "w2a2": (261_376, 0.944),
    "w1a2": (151_168, 0.942),
    "w1a1": (143_936, 0.861),
}


def sweep_summary(std: float) -> list[dict]:
    return [
        {"recipe": recipe, "head": "cosine", "loss": "logitnorm", "deployed_bits": bits,
         "accuracy_mean": accuracy, "accuracy_std": std}
        for recipe, (bits, accuracy) in SWEEP.items()
    ]  # fmt: skip


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("std", [0.0, 0.005])  # one seed; three seeds with error bars
def test_pareto_labels_do_not_overlap(std):
    import matplotlib.pyplot as plt

    from lowbit.bench.plots import pareto_figure

    fig, ax = pareto_figure(sweep_summary(std))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [text for text in ax.texts if text.get_text() in SWEEP]
    assert sorted(text.get_text() for text in labels) == sorted(SWEEP)  # recipe only: one head
    boxes = [text.get_window_extent(renderer) for text in labels]
    markers = [ax.transData.transform((bits, 100 * acc)) for bits, acc in SWEEP.values()]
    legend = ax.get_legend().get_window_extent(renderer)
    frame = ax.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert not overlaps(box, legend), labels[i].get_text()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
        for j in range(i + 1, len(boxes)):
            assert not overlaps(box, boxes[j]), (labels[i].get_text(), labels[j].get_text())
        for x, y in markers:  # no label covers a point's centre
            assert not (box.x0 < x < box.x1 and box.y0 < y < box.y1), labels[i].get_text()
    plt.close(fig)
