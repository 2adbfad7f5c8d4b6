"""Per-image latency of the C target's kernels next to the numpy runtime and onnxruntime.

    python benchmarks/c_speed.py RUN_DIR [RUN_DIR ...] [--images 64] [--repeats 7] [--out DIR]
    python benchmarks/c_speed.py --recipe w2a2          # a calibrated conv4-64, exported here

For each exported model (a run directory with model.int.onnx, model.qcdq.onnx and model.json; it is
copied, not written to) the script writes the C target twice, `kernel="scalar"` (the reference) and
`kernel="bitserial"`, compiles each at -O2 and at -O3 -march=native (and the bit-serial one at -O2
with -DLOWBIT_NO_VECTOR_POPCOUNT, what a CPU without AVX-512 VPOPCNTDQ runs), checks that the C
logits equal the numpy runtime's on the benchmark inputs, and times per image: the C library called
image by image through ctypes (one `<prefix>_infer` call per image: input quantization, the integer
body, the logits and the deployed unknown-type score), lowbit's numpy runtime, onnxruntime on the
QCDQ graph and on a plain fp32 graph of the same architecture (random weights: speed does not depend
on them), onnxruntime with its default threads and with one thread (intra_op_num_threads=1). Each
executor is timed in a fresh process of its own that imports numpy and that executor only
(speed_worker.py; numpy with one BLAS thread), on the same .npy input; the processes start together
and take turns, one pass over the images at a time, so that all of them sample the same stretches of
this machine's changing speed (runtime_speed.py). Medians over repeats of CPU and wall ms per image
(CPU time counts every thread of the process). Then the time of each step of the bit-serial -O2
library, measured through its debug tap (`--layers`). Writes c_speed.json.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one thread for numpy: the C code uses one

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from runtime_speed import machine, take_turns  # noqa: E402  (beside this script)

from lowbit.export.api import export_model  # noqa: E402
from lowbit.io import atomic_write_json  # noqa: E402
from lowbit.models import ModelConfig, build_model  # noqa: E402
from lowbit.quant import get_recipe  # noqa: E402
from lowbit.runtime import Runtime  # noqa: E402
from lowbit.targets.c.run import CModel, compile_c_target, find_compiler  # noqa: E402
from lowbit.targets.c.target import C_DIR, write_c_target  # noqa: E402

OPTIONS = (("-O2", "-O2"), ("-O3 -march=native", "-O3 -march=native"))
NO_VECTOR = "LOWBIT_NO_VECTOR_POPCOUNT"  # the C target's switch off the vector popcount body


def calibrated_export(recipe: str, out: Path, classes: int = 8) -> None:
    """Exports a conv4-64 whose activation scales saw random data (no training) into `out`."""
    torch.manual_seed(0)
    model = build_model(get_recipe(recipe), ModelConfig(backbone="conv4", num_classes=classes))
    model.train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(32, 3, 32, 32))
    export_model(
        model.eval(),
        out,
        class_names=[f"c{i}" for i in range(classes)],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )


def fp32_graph(description: dict, out: Path) -> Path:
    """A plain fp32 ONNX graph of the exported architecture (random weights)."""
    shape = description["model"]
    config = ModelConfig(
        backbone=shape["backbone"], width=shape.get("width"), num_classes=shape["num_classes"]
    )
    fp32 = build_model(get_recipe("fp32"), config).eval()
    path = out / "fp32.onnx"
    torch.onnx.export(
        fp32,
        torch.zeros(1, 3, 32, 32),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    return path


def per_image_ms(specs: dict[str, dict], repeats: int) -> dict[str, tuple[float, float]]:
    """(CPU, wall) ms per image of each executor, median over `repeats` passes over the images,
    the executors taking turns one pass at a time (runtime_speed.py's `take_turns`)."""
    replies = take_turns(list(specs.values()), [1] * repeats, threads=1)
    return {
        name: (
            statistics.median(ms for reply in worker for ms in reply["cpu_ms"]),
            statistics.median(ms for reply in worker for ms in reply["wall_ms"]),
        )
        for name, worker in zip(specs, replies)
    }


def c_calls(c_model: CModel, x: np.ndarray):
    """fn() that calls `<prefix>_infer` once per image (no Python work but the ctypes call)."""
    pointers = [x[i].ctypes.data for i in range(len(x))]
    result, scratch, infer = ctypes.byref(c_model.result), c_model.scratch, c_model.infer

    def run() -> None:
        for pointer in pointers:
            infer(pointer, result, scratch)

    return run


def step_times(library: Path, classes: int, x: np.ndarray, repeats: int) -> dict[str, float]:
    """CPU µs per image from one debug-tap call to the next (the step that computed each
    tensor), median over repeats; the tap's own cost (~1 µs per step) is included."""
    c_model = CModel(library, classes)
    marks: list[tuple[str, float]] = []
    callback = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong
    )
    tap = callback(lambda name, *_: marks.append((name.decode(), time.process_time())))
    ctypes.c_void_p.in_dll(c_model.lib, "lowbit_tap").value = ctypes.cast(
        tap, ctypes.c_void_p
    ).value
    samples: dict[str, list[float]] = {}
    run = c_calls(c_model, x[:1])
    for _ in range(repeats * len(x)):
        marks.clear()
        start = time.process_time()
        run()
        end = time.process_time()
        previous = start
        for name, moment in marks:
            samples.setdefault(name, []).append((moment - previous) * 1e6)
            previous = moment
        samples.setdefault("(after the last tap: head tail, unknown-type score)", []).append(
            (end - previous) * 1e6
        )
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_model(export_dir: Path, images: int, repeats: int, work: Path) -> dict:
    description = json.loads((export_dir / "model.json").read_text())
    if description.get("ood"):  # one pass of the graph, as every other executor here runs it;
        # a detector with views runs the body once per view (docs/accelerator_targets.md)
        description["ood"] = {**description["ood"], "views": 1}
    classes = len(description["class_names"])
    x = np.random.default_rng(0).uniform(-2, 2, (images, 3, 32, 32)).astype(np.float32)
    runtime = Runtime(export_dir / "model.int.onnx")
    expected = runtime.run(x)["logits"]
    inputs = work / "inputs.npy"
    np.save(inputs, x)
    common = {"inputs": str(inputs), "classes": classes, "threads": 1}
    specs: dict[str, dict] = {}
    for kernel in ("scalar", "bitserial"):
        write_c_target(export_dir, description, kernel=kernel)
        for label, opt in OPTIONS:
            library = compile_c_target(
                export_dir / C_DIR, work / f"{kernel}{opt.replace(' ', '')}.so", opt=opt
            )
            c_model = CModel(library, classes)
            assert np.array_equal(c_model.run(x)["logits"], expected), f"{kernel} {label}"
            spec = {**common, "kind": "c", "model": str(library), "batch": 1}
            specs[f"C {kernel} {label} (batch 1)"] = spec
    # the bit-serial -O2 library without its vector body: what the default build runs on a CPU
    # without AVX-512 VPOPCNTDQ
    library = compile_c_target(
        export_dir / C_DIR, work / "bitserial-novector.so", defines=(NO_VECTOR,)
    )
    assert np.array_equal(CModel(library, classes).run(x)["logits"], expected), "no vector"
    specs["C bitserial -O2, no vector body (batch 1)"] = {
        **common,
        "kind": "c",
        "model": str(library),
        "batch": 1,
    }
    library = compile_c_target(export_dir / C_DIR, work / "bitserial-tap.so", tap=True)
    steps = step_times(library, classes, x, repeats)
    int_graph = str(export_dir / "model.int.onnx")
    for batch in (1, images):
        spec = {**common, "kind": "runtime", "model": int_graph, "batch": batch}
        specs[f"numpy runtime (batch {batch})"] = spec
    graphs = {"QCDQ": export_dir / "model.qcdq.onnx", "fp32": fp32_graph(description, work)}
    for graph, path in graphs.items():
        for threads, label in ((0, "default threads"), (1, "1 thread")):
            for batch in (1, images):
                spec = {**common, "kind": "onnxruntime", "model": str(path), "batch": batch}
                specs[f"onnxruntime {graph}, {label} (batch {batch})"] = {
                    **spec,
                    "threads": threads,
                }
    timings = per_image_ms(specs, repeats)
    reference = timings["onnxruntime QCDQ, 1 thread (batch 1)"][0]
    rows = [
        {
            "executor": name,
            "cpu_ms_per_image": round(cpu, 4),
            "wall_ms_per_image": round(wall, 4),
            "cpu_vs_onnxruntime_qcdq_1_thread": round(cpu / reference, 2),
        }
        for name, (cpu, wall) in timings.items()
    ]
    return {
        "model": str(export_dir),
        "recipe": description.get("recipe", {}).get("name"),
        "rows": rows,
        "bitserial_o2_steps_us": {name: round(us, 1) for name, us in steps.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="exported run directories")
    parser.add_argument("--recipe", default="w2a2", help="without runs: a calibrated conv4-64")
    parser.add_argument("--images", type=int, default=64, help="random images per model")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes over the images")
    parser.add_argument("--out", default="benchmarks/results/c_speed", help="output folder")
    args = parser.parse_args()
    if find_compiler() is None:
        parser.error("no C compiler found: set CC, or install cc, gcc or clang")
    torch.set_num_threads(1)
    results = []
    for run in args.runs or [None]:
        work = Path(tempfile.mkdtemp())
        export_dir = work / "export"
        if run is None:
            calibrated_export(args.recipe, export_dir)
        else:  # a copy: the C files are written next to the graphs
            shutil.copytree(run, export_dir, ignore=shutil.ignore_patterns("*.pt"))
        results.append(bench_model(export_dir, args.images, args.repeats, work))
        results[-1]["model"] = str(run) if run is not None else f"calibrated {args.recipe}"
    atomic_write_json(
        Path(args.out) / "c_speed.json",
        {
            "images": args.images,
            "repeats": args.repeats,
            "compiler": find_compiler(),
            "machine": machine(),
            "models": results,
        },
    )
    print(
        f"{machine()}, {find_compiler()}; per image over {args.images} images, "
        f"median of {args.repeats} repeats; CPU time counts every thread of the process"
    )
    for result in results:
        print(f"\n{result['model']} ({result['recipe']})")
        print("| executor | CPU ms / image | wall ms / image | CPU vs onnxruntime QCDQ 1 thread |")
        print("|---|---|---|---|")
        for row in result["rows"]:
            print(
                f"| {row['executor']} | {row['cpu_ms_per_image']:.3f} | "
                f"{row['wall_ms_per_image']:.3f} | {row['cpu_vs_onnxruntime_qcdq_1_thread']:.2f} |"
            )
        print("\nC bitserial -O2, CPU µs per image by step (debug tap):")
        for name, us in result["bitserial_o2_steps_us"].items():
            print(f"  {us:8.1f}  {name}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
