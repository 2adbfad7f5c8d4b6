"""What the views of the unknown-type detector cost: time per crop of the deployed decision with
V views against one view, for the integer runtime and the C target, measured in one process.

    python benchmarks/ood_view_cost.py EXPORT_DIR [--views 8] [--rounds 15] [--out FILE]

EXPORT_DIR is any export with a feature-score detector (`lowbit export`); its statistics are
reused for both view counts (only the time is measured here, not the decision). Runtime: one
call of `run_views` (what `lowbit predict` runs: the crops' views stacked into one batch, the
feature codes summed) on 1 crop and on 64 crops. C: `<prefix>_infer` per crop, generated with
`ood.views` = 1 and = V, compiled at -O2. The two view counts take turns within each round, so
both sample the same machine speed; medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from lowbit.core.feature_scores import load_export_stats
from lowbit.fewshot.predict import run_views
from lowbit.io import atomic_write_json
from lowbit.runtime import Runtime
from lowbit.targets.c.run import CModel, compile_c_target
from lowbit.targets.c.target import generate_c


def c_models(export_dir: Path, description: dict, views: tuple[int, ...], work: Path) -> dict:
    """Returns {V: CModel} of the export's C target generated with ood.views = V."""
    graph = onnx.load(str(export_dir / description["files"]["int"]))
    stats = load_export_stats(export_dir, description)
    models = {}
    for count in views:
        folder = work / f"views{count}"
        folder.mkdir()
        changed = {**description, "ood": {**description["ood"], "views": count}}
        for name, text in generate_c(graph, changed, stats=stats).items():
            (folder / name).write_text(text)
        library = compile_c_target(folder, work / f"views{count}.so")
        models[count] = CModel(library, len(description["class_names"]))
    return models


def timed(function, repeats: int) -> float:
    """Returns the median seconds of `repeats` calls (after one untimed call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    description = json.loads((args.export_dir / "model.json").read_text())
    size = description["model"]["image_size"]
    x = np.random.default_rng(0).uniform(-2, 2, (64, 3, size, size)).astype(np.float32)
    runtime = Runtime(args.export_dir / description["files"]["int"])
    counts = (1, args.views)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as work:
        models = c_models(args.export_dir, description, counts, Path(work))
        for _ in range(args.rounds):
            for count in counts:
                for batch, repeats in ((1, 20), (64, 2)):
                    seconds = timed(lambda: run_views(runtime, x[:batch], count, True), repeats)
                    key = f"runtime, batch {batch}, {count} view(s)"
                    samples.setdefault(key, []).append(seconds / batch * 1e3)
                seconds = timed(lambda: models[count].run(x[:16]), 2)
                samples.setdefault(f"C -O2, {count} view(s)", []).append(seconds / 16 * 1e3)
    rows = {key: statistics.median(values) for key, values in samples.items()}
    print(f"{'executor':<34} {'ms per crop':>11} {'x one view':>10}")
    for key, value in rows.items():
        one = rows[key.replace(f"{args.views} view(s)", "1 view(s)")]
        print(f"{key:<34} {value:11.3f} {value / one:10.2f}")
    if args.out:
        atomic_write_json(args.out, {"export": str(args.export_dir), "ms_per_crop": rows})
    return rows


if __name__ == "__main__":
    main()
