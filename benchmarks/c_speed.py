"""Per-image latency of the C target next to the numpy runtime and onnxruntime, same inputs.

    python benchmarks/c_speed.py [--recipe w2a2] [--images 64] [--repeats 5] [--out DIR]

Builds a conv4-64 model at 32x32 for the recipe (calibrated on random data: speed does not depend
on training), exports it, writes and compiles the C target (-O2, and -O3 -march=native), checks
that the C outputs equal the runtime's on the benchmark inputs, then times per image, all on one
thread: the C library called image by image through ctypes (call overhead ~1 us included),
lowbit's numpy runtime at batch 1 and at batch 64 (per image), onnxruntime on the QCDQ graph at
batch 1 and 64. Reports medians over repeats of CPU and wall ms per image; writes c_speed.json.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one thread everywhere: the C code uses one

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from lowbit.export.api import export_model  # noqa: E402
from lowbit.io import atomic_write_json  # noqa: E402
from lowbit.models import ModelConfig, build_model  # noqa: E402
from lowbit.quant import get_recipe  # noqa: E402
from lowbit.runtime import Runtime  # noqa: E402
from lowbit.targets.c.run import CModel, compile_c_target, find_compiler  # noqa: E402
from lowbit.targets.c.target import C_DIR, write_c_target  # noqa: E402

CLASSES = 8


def calibrated(recipe: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(get_recipe(recipe), ModelConfig(backbone="conv4", num_classes=CLASSES))
    model.train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(32, 3, 32, 32))
    return model.eval()


def per_image_ms(fn, images: int, repeats: int) -> tuple[float, float]:
    """Medians over repeats of (CPU time, wall time) of fn() / images, in ms; one warm-up first.

    CPU time (process_time, every thread of this process) is the fair measure on a shared
    machine when everything runs on one thread; wall time counts the waits for a core too.
    """
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1000 / images)
        wall.append((time.perf_counter() - start_wall) * 1000 / images)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="w2a2")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/c_speed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    description = export_model(
        calibrated(args.recipe),
        tmp,
        class_names=[f"c{i}" for i in range(CLASSES)],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    write_c_target(tmp, description)
    x = np.random.default_rng(0).uniform(-2, 2, (args.images, 3, 32, 32)).astype(np.float32)
    runtime = Runtime(tmp / "model.int.onnx")
    expected = runtime.run(x)["logits"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(tmp / "model.qcdq.onnx"), options, providers=["CPUExecutionProvider"]
    )
    timings = {}
    for label, opt in (("C -O2", "-O2"), ("C -O3 -march=native", "-O3 -march=native")):
        library = compile_c_target(tmp / C_DIR, tmp / f"model{opt.replace(' ', '')}.so", opt=opt)
        c_model = CModel(library, CLASSES)
        got = c_model.run(x)
        assert np.array_equal(got["logits"], expected), f"{label}: logits differ from the runtime"
        timings[f"{label} (batch 1)"] = per_image_ms(lambda: c_model.run(x), len(x), args.repeats)
    single = [x[i : i + 1] for i in range(len(x))]
    timings["numpy runtime (batch 1)"] = per_image_ms(
        lambda: [runtime.run(image) for image in single], len(x), args.repeats
    )
    timings["numpy runtime (batch 64)"] = per_image_ms(lambda: runtime.run(x), len(x), args.repeats)
    timings["onnxruntime QCDQ (batch 1)"] = per_image_ms(
        lambda: [session.run(None, {"input": image}) for image in single], len(x), args.repeats
    )
    timings["onnxruntime QCDQ (batch 64)"] = per_image_ms(
        lambda: session.run(None, {"input": x}), len(x), args.repeats
    )
    base = timings["C -O2 (batch 1)"][0]
    rows = [
        {
            "executor": name,
            "cpu_ms_per_image": round(cpu, 4),
            "wall_ms_per_image": round(wall, 4),
            "cpu_ratio_vs_c_o2": round(cpu / base, 2),
        }
        for name, (cpu, wall) in timings.items()
    ]
    atomic_write_json(
        Path(args.out) / "c_speed.json",
        {
            "recipe": args.recipe,
            "model": "conv4-64, 32x32, 8 classes",
            "images": args.images,
            "repeats": args.repeats,
            "threads": 1,
            "compiler": find_compiler(),
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
        },
    )
    print(f"| executor ({args.recipe}, conv4-64, 1 thread) | CPU ms / image | wall ms / image "
          "| CPU vs C -O2 |")  # fmt: skip
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['executor']} | {row['cpu_ms_per_image']:.3f} | "
            f"{row['wall_ms_per_image']:.3f} | {row['cpu_ratio_vs_c_o2']:.2f} |"
        )


if __name__ == "__main__":
    with torch.no_grad():
        main()
