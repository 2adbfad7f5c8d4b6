"""Is the stage-1 detector the same integers on every executor?

    python benchmarks/stage1_verify.py --run runs/.../w2a2 --out runs/stage1_verify

Fits the integer memory bank on the runtime's codes of built-in whole train/good images of one
texture (lowbit/data/whole.py), builds the stage-1 detector graphs (lowbit/detect/graph.py,
float_graphs.py) and runs whole images (train and test images of every texture asked for) plus
seeded random images through torch fake-quant, the integer runtime, onnxruntime (QCDQ) and
qonnx (QONNX), comparing trunk codes, anomaly maps and image scores exactly
(lowbit/verify/detector.py). qonnx's executor runs node by node: `--qonnx-images` caps it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import whole_image_data  # noqa: E402  (benchmarks/, beside this script)

from lowbit.artifacts import GRAPH_FILES
from lowbit.data import load_whole_images, to_tensor_array
from lowbit.detect.aggregate import aggregate, aggregated_range
from lowbit.detect.memory_bank import fit_memory_bank
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.manifest import read_description
from lowbit.runtime import Runtime
from lowbit.train.run import load_run
from lowbit.verify.detector import format_detector_report, verify_detector
from lowbit.verify.inputs import random_inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run + export folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layer", default="backbone.blocks.1.pool")
    parser.add_argument("--aggregate", type=int, default=3)
    whole_image_data.add_options(parser)
    parser.add_argument("--bank", type=int, default=2000)
    parser.add_argument("--random", type=int, default=600)
    parser.add_argument("--qonnx-images", type=int, default=200, help="cap of both qonnx runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    textures, data_root = whole_image_data.textures_and_data(args, args.out / f"data{args.size}")
    sets = {}
    for texture in textures:
        data = load_whole_images(data_root / texture, max_train_good=args.train_good)
        sets[f"{texture}/train"] = to_tensor_array(np.stack(data.train_good))
        sets[f"{texture}/test"] = to_tensor_array(np.stack(data.test_images))
    description = read_description(args.run)
    max_abs = description["model"]["input_max_abs"]
    sets["random"] = random_inputs(args.random, args.size, max_abs=max_abs, seed=args.seed)

    int_graph = onnx.load(args.run / GRAPH_FILES["int"])
    trunk = cut_trunk(int_graph, [args.layer], args.size, args.size)
    value_range = aggregated_range(trunk_code_range(trunk, args.layer), args.aggregate)
    good = Runtime(trunk).run(sets[f"{textures[0]}/train"])[args.layer]
    bank = fit_memory_bank(aggregate(good, args.aggregate), args.bank, value_range)
    model, _ = load_run(args.run)
    started = time.perf_counter()
    report = verify_detector(
        model,
        args.run,
        args.layer,
        args.aggregate,
        bank,
        sets,
        max_images={"qonnx": args.qonnx_images, "int_qonnx": args.qonnx_images},
    )
    report["bank_texture"] = textures[0]
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"stage1_verify_{args.run.name}.json"
    (args.out / name).write_text(json.dumps(report, indent=1))
    print(format_detector_report(report))
    print(f"{report['seconds']} s; inputs {report['inputs']}")
    return 1 if report["unexplained"] else 0


if __name__ == "__main__":
    sys.exit(main())
