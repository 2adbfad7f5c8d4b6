"""Toolchain hand-off check on a trained model: C, hls4ml and FINN against the integer runtime.

    python benchmarks/handoff_check.py EXPORT_DIR [EXPORT_DIR ...] [--targets c,hls4ml] [--n 256]
    .venv-finn/bin/python benchmarks/handoff_check.py EXPORT_DIR --targets finn   # FINN's venv

EXPORT_DIR is a folder `lowbit export` wrote (e.g. runs/main/w1a2 after `lowbit run`). The inputs
are the run's first n/2 real test images plus n/2 seeded random images. For each target the
script writes it (`lowbit export --target` writers), runs its consumer and compares with the
numpy integer runtime exactly: C — class dot products, sum of squares, logits and argmax;
hls4ml (C++ emulation, io_stream) and FINN (ConvertQONNXtoFINN + Streamline + execute_onnx) —
feature codes and class dot products. Prints one line per (model, target); exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.runtime import Runtime
from lowbit.verify.inputs import random_inputs


def inputs_for(export_dir: Path, n: int) -> np.ndarray:
    from lowbit.train.run import load_run, splits_for

    description = json.loads((export_dir / "model.json").read_text())
    _, record = load_run((export_dir / description.get("source_run", ".")).resolve())
    real = splits_for(record).test.x[: n // 2]
    size = description["model"]["image_size"]
    noise = random_inputs(
        n - len(real), size, max_abs=description["model"]["input_max_abs"], seed=0
    )
    return np.concatenate([real, noise]).astype(np.float32)


def check_c(export_dir: Path, x: np.ndarray, reference: dict) -> int:
    from lowbit.targets.c.run import CModel, compile_c_target
    from lowbit.targets.c.target import C_DIR, write_c_target

    write_c_target(export_dir, json.loads((export_dir / "model.json").read_text()))
    classes = reference["logits"].shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        library = compile_c_target(export_dir / C_DIR, Path(tmp) / "model.so")
        got = CModel(library, classes).run(x)
    bad = ~np.all(got["class_dots"] == reference["head.class_dot"], axis=1)
    bad |= got["logits"].argmax(1) != reference["logits"].argmax(1)
    bad |= ~np.all(got["logits"] == reference["logits"], axis=1)
    return int(bad.sum())


def _compare_features(features, class_dot, reference, hwc_channels: int | None) -> int:
    from lowbit.targets.hls4ml import chw_to_hwc

    want = reference["backbone.features"]
    if hwc_channels is not None:
        want = chw_to_hwc(want, hwc_channels)
    bad = ~np.all(class_dot == reference["head.class_dot"], axis=1)
    bad |= ~np.all(features == want, axis=1)
    return int(bad.sum())


def check_hls4ml(export_dir: Path, x: np.ndarray, reference: dict) -> int:
    from lowbit.targets.hls4ml import convert_hls4ml, write_hls4ml

    write_hls4ml(export_dir)
    channels = json.loads((export_dir / "model.json").read_text())["layers"][-1]["out_channels"]
    with tempfile.TemporaryDirectory() as tmp:
        model = convert_hls4ml(export_dir, Path(tmp) / "hls")
        features, class_dot = model.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    return _compare_features(features, class_dot, reference, channels)


def check_finn(export_dir: Path, x: np.ndarray, reference: dict) -> int:
    from finn.core.onnx_exec import execute_onnx
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.streamline import Streamline
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    from lowbit.targets.finn import GRAPH_FILE, write_finn

    write_finn(export_dir)
    model = ModelWrapper(str(export_dir / GRAPH_FILE))
    model = model.transform(InferShapes()).transform(InferDataTypes())
    model = model.transform(ConvertQONNXtoFINN()).transform(Streamline())
    name = model.graph.input[0].name
    features_name, dot_name = (output.name for output in model.graph.output)
    results = [execute_onnx(model, {name: image[None]}) for image in x]
    features = np.array([r[features_name][0] for r in results])
    class_dot = np.array([r[dot_name][0] for r in results])
    return _compare_features(features, class_dot, reference, None)


CHECKS = {"c": check_c, "hls4ml": check_hls4ml, "finn": check_finn}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path)
    parser.add_argument("--targets", default="c,hls4ml")
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    failed = False
    for export_dir in args.exports:
        x = inputs_for(export_dir, args.n)
        reference = Runtime(export_dir / "model.int.onnx").run(x, keep_intermediates=True)
        recipe = json.loads((export_dir / "model.json").read_text())["recipe"]["name"]
        for target in args.targets.split(","):
            start = time.perf_counter()
            mismatches = CHECKS[target](export_dir, x, reference)
            seconds = time.perf_counter() - start
            failed |= mismatches > 0
            print(
                f"{export_dir} ({recipe}): {target}: {mismatches} of {len(x)} inputs differ "
                f"({seconds:.1f} s)",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
