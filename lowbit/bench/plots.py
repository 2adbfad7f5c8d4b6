"""The bench plots (matplotlib, Agg backend, PNG): Pareto, ROC, confusion matrix, per-layer bits."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from lowbit.io import atomic_write_bytes  # noqa: E402

DEFAULT_RECIPE = "w1a2"  # `lowbit run`'s model: the confusion matrix and layer chart show it


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Returns the indices of (bits, accuracy) points no other point beats: fewer or equal bits
    and higher or equal accuracy, one of them strictly. Sorted by bits."""
    front = []
    for i, (bits, acc) in enumerate(points):
        dominated = any(
            b <= bits and a >= acc and (b < bits or a > acc)
            for j, (b, a) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _label(entry: dict) -> str:
    return f"{entry['recipe']} {entry['head']} {entry['loss']}"


# label offsets from a point, in typographic points: nearest first, then further out
LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.4, 0), (-1.4, 0))
LABEL_RADII = (5, 12, 20, 30, 42)
MARKER_HALF_PX = 5  # half the side of the square a marker covers, in pixels


def point_labels(summary: list[dict]) -> list[str]:
    """Returns one label per entry: the recipe, with head and loss only where they vary."""
    varies = [len({entry[key] for entry in summary}) > 1 for key in ("head", "loss")]
    return [
        " ".join([entry["recipe"]] + [entry[k] for k, v in zip(("head", "loss"), varies) if v])
        for entry in summary
    ]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def place_labels(
    ax,
    texts: list[str],
    points: list[tuple[float, float]],
    y_errors: list[float] | None = None,
    line: list[tuple[float, float]] = (),
) -> list:
    """Annotates each point with its text at the nearest offset whose box overlaps no other
    label, marker, error bar or the polyline `line`, and stays inside the axes; returns the
    annotations.

    Greedy over LABEL_RADII x LABEL_DIRECTIONS, measured with the renderer's text extents (the
    idea of adjustText, without its iterations); where every offset collides, the one with the
    least overlapping area is kept.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # final limits and transforms before anything is measured
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    y_errors = y_errors or [0.0] * len(points)
    markers = []
    for (x, y), error in zip(points, y_errors):
        (px, low), (_, high) = ax.transData.transform([(x, y - error), (x, y + error)])
        half = MARKER_HALF_PX
        markers.append(Bbox.from_extents(px - half, min(low, high) - half, px + half,
                                         max(low, high) + half))  # fmt: skip
    vertices = ax.transData.transform(line) if len(line) else np.zeros((0, 2))
    for start, end in zip(vertices[:-1], vertices[1:]):  # the line as 2-pixel boxes, every 3 px
        steps = max(2, int(np.hypot(*(end - start)) / 3))
        for x, y in np.linspace(start, end, steps):
            markers.append(Bbox.from_extents(x - 1, y - 1, x + 1, y + 1))
    placed, annotations = [], []
    for text, point in zip(texts, points):
        annotation = ax.annotate(text, point, xytext=(0, 0), textcoords="offset points", size=7)
        best = None
        for radius in LABEL_RADII:
            for dx, dy in LABEL_DIRECTIONS:
                annotation.xyann = (dx * radius, dy * radius)
                annotation.set_ha("left" if dx > 0 else "right" if dx < 0 else "center")
                annotation.set_va("bottom" if dy > 0 else "top" if dy < 0 else "center")
                box = annotation.get_window_extent(renderer)
                crowd = sum(_area(box, other) for other in placed + markers)
                outside = not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and
                               frame.y0 <= box.y0 and box.y1 <= frame.y1)  # fmt: skip
                cost = (outside, crowd)
                if best is None or cost < best[0]:
                    best = (cost, annotation.xyann, annotation.get_ha(), annotation.get_va())
                if cost == (False, 0.0):
                    break
            if best[0] == (False, 0.0):
                break
        _, annotation.xyann, horizontal, vertical = best
        annotation.set_ha(horizontal)
        annotation.set_va(vertical)
        placed.append(annotation.get_window_extent(renderer))
        annotations.append(annotation)
    return annotations


def _area(a, b) -> float:
    """Returns the area two boxes share (0 when they only touch)."""
    if not _overlap(a, b):
        return 0.0
    return (min(a.x1, b.x1) - max(a.x0, b.x0)) * (min(a.y1, b.y1) - max(a.y0, b.y0))


def pareto_figure(summary: list[dict]):
    """Returns (figure, axes) of accuracy vs deployed bits, the Pareto front and point labels."""
    points = [(e["deployed_bits"], 100 * e["accuracy_mean"]) for e in summary]
    errors = [100 * (e["accuracy_std"] or 0.0) for e in summary]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (bits, accuracy) in enumerate(points):
        ax.errorbar(
            bits,
            accuracy,
            yerr=errors[i],
            fmt="o",
            color="tab:blue" if i in front else "tab:gray",
            capsize=3,
        )
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:blue",
            label="Pareto front")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
    ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
    ax.set_xlabel("deployed bits (weights + thresholds)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs model size")
    ax.grid(alpha=0.3)
    place_labels(ax, point_labels(summary), points, errors, [points[i] for i in front])
    ax.legend(loc="best")  # after the labels: "best" avoids them too
    return fig, ax


def plot_pareto(summary: list[dict], path: Path) -> None:
    fig, _ = pareto_figure(summary)
    _save(fig, path)


def plot_roc(rows: list[dict], path: Path) -> bool:
    """OOD ROC (MSP, known test images vs held-out classes), seed 0 of each configuration."""
    curves = [r for r in rows if r.get("roc") and r["seed"] == 0]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for row in curves:
        auroc = (row.get("ood") or {}).get("msp", {}).get("auroc")
        suffix = f" (AUROC {auroc:.3f})" if auroc is not None else ""
        ax.plot(row["roc"]["fpr"], row["roc"]["tpr"], label=_label(row) + suffix)
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false-positive rate (unknown accepted)")
    ax.set_ylabel("true-positive rate (known accepted)")
    ax.set_title("unknown-defect detection, MSP score")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    return True


def _default_row(rows: list[dict]) -> dict:
    seed0 = [r for r in rows if r["seed"] == 0] or rows
    return next((r for r in seed0 if r["recipe"] == DEFAULT_RECIPE), seed0[-1])


def plot_confusion(rows: list[dict], path: Path) -> bool:
    row = _default_row(rows)
    matrix, names = row.get("confusion_matrix"), row.get("class_names")
    if not matrix or not names:
        return False
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    image = ax.imshow(matrix, cmap="Blues")
    top = max(max(line) for line in matrix) or 1
    for i, line in enumerate(matrix):
        for j, count in enumerate(line):
            color = "white" if count > top / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", size=7, color=color)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", size=7)
    ax.set_yticks(range(len(names)), names, size=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {_label(row)}, seed {row['seed']}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)
    return True


def plot_layers(rows: list[dict], path: Path) -> bool:
    """Left: the default model's stored bits per layer; right: accumulator bits per recipe."""
    quantized = [r for r in rows if r.get("layers") and r["seed"] == 0]
    if not quantized:
        return False
    default = next((r for r in quantized if r["recipe"] == DEFAULT_RECIPE), quantized[0])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [layer["name"].replace("backbone.", "") for layer in default["layers"]]
    left.bar(names, [layer["stored_bits"] for layer in default["layers"]], color="tab:blue")
    left.set_ylabel("stored bits (weights + thresholds)")
    left.set_title(f"per-layer size: {_label(default)}")
    left.tick_params(axis="x", rotation=45, labelsize=7)
    conv_names = [layer["name"] for layer in default["layers"] if layer["accumulator_bits"]]
    width = 0.8 / len(quantized)
    for k, row in enumerate(quantized):
        widths = {layer["name"]: layer["accumulator_bits"] for layer in row["layers"]}
        xs = [i + k * width for i in range(len(conv_names))]
        right.bar(xs, [widths.get(name) or 0 for name in conv_names], width, label=row["recipe"])
    right.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(conv_names))],
        [name.replace("backbone.", "") for name in conv_names],
        rotation=45,
        size=7,
    )
    right.set_ylabel("accumulator bits")
    right.set_title("accumulator width per layer")
    right.legend(fontsize=7)
    _save(fig, path)
    return True


def write_plots(results: dict, out: Path) -> dict[str, str]:
    """Writes the PNGs under `out`; returns {title: file name} of those written."""
    out = Path(out)
    written = {}
    plot_pareto(results["summary"], out / "accuracy_vs_bits.png")
    written["accuracy vs deployed bits"] = "accuracy_vs_bits.png"
    if plot_roc(results["rows"], out / "ood_roc.png"):
        written["OOD ROC curves"] = "ood_roc.png"
    if plot_confusion(results["rows"], out / "confusion_matrix.png"):
        written["confusion matrix"] = "confusion_matrix.png"
    if plot_layers(results["rows"], out / "layer_bits.png"):
        written["per-layer bits and accumulators"] = "layer_bits.png"
    return written
