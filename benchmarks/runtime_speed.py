"""Inference speed of one exported model on four executors, same inputs, one run.

    python benchmarks/runtime_speed.py [--recipe w2a2] [--repeats 20] [--out DIR]

Builds a conv4-64 model at 32x32 for the recipe (calibrated on random data: speed does not depend
on training), exports it, and times batch 1 and batch 64 for: lowbit's integer runtime,
onnxruntime on the QCDQ graph (default graph optimizations, as users run it), onnxruntime on the
plain fp32 graph of the same architecture, qonnx `execute_onnx` on the QONNX graph, and torch
fake-quant. Reports medians (ms) and ratios against onnxruntime-QCDQ; writes speed.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from lowbit.export.api import export_model
from lowbit.io import atomic_write_json
from lowbit.models import ModelConfig, build_model
from lowbit.quant import get_recipe
from lowbit.runtime import Runtime
from lowbit.verify.capture import qonnx_codes


def calibrated(recipe: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(get_recipe(recipe), ModelConfig(backbone="conv4", num_classes=8))
    model.train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(32, 3, 32, 32))
    return model.eval()


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="w2a2")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/speed")
    args = parser.parse_args()
    model = calibrated(args.recipe)
    tmp = Path(tempfile.mkdtemp())
    export_model(
        model,
        tmp,
        class_names=[f"c{i}" for i in range(8)],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    runtime = Runtime(tmp / "model.int.onnx")
    session = ort.InferenceSession(str(tmp / "model.qcdq.onnx"), providers=["CPUExecutionProvider"])
    fp32 = build_model(get_recipe("fp32"), ModelConfig(backbone="conv4", num_classes=8)).eval()
    fp32_path = tmp / "fp32.onnx"
    torch.onnx.export(
        fp32,
        torch.zeros(1, 3, 32, 32),
        str(fp32_path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    fp32_session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    import onnx

    qonnx_graph = onnx.load(str(tmp / "model.qonnx.onnx"))
    rows = []
    for batch in (1, 64):
        x = np.random.default_rng(0).uniform(-2, 2, (batch, 3, 32, 32)).astype(np.float32)
        xt = torch.from_numpy(x)
        timings = {
            "lowbit integer runtime": median_ms(lambda: runtime.run(x), args.repeats),
            "onnxruntime QCDQ": median_ms(lambda: session.run(None, {"input": x}), args.repeats),
            "onnxruntime fp32 graph": median_ms(
                lambda: fp32_session.run(None, {"input": x}), args.repeats
            ),
            "torch fake-quant": median_ms(lambda: model(xt), args.repeats),
            "qonnx execute_onnx": median_ms(
                lambda: qonnx_codes(copy.deepcopy(qonnx_graph), x, []), max(3, args.repeats // 4)
            ),
        }
        base = timings["onnxruntime QCDQ"]
        for name, ms in timings.items():
            rows.append(
                {
                    "batch": batch,
                    "executor": name,
                    "median_ms": round(ms, 3),
                    "ratio_vs_ort_qcdq": round(ms / base, 3),
                }
            )
    with torch.no_grad():
        pass
    atomic_write_json(
        Path(args.out) / "speed.json",
        {"recipe": args.recipe, "rows": rows, "torch_threads": torch.get_num_threads()},
    )
    print("| batch | executor | median ms | ratio vs onnxruntime QCDQ |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['batch']} | {row['executor']} | {row['median_ms']:.2f} "
            f"| {row['ratio_vs_ort_qcdq']:.2f} |"
        )


if __name__ == "__main__":
    with torch.no_grad():
        main()
