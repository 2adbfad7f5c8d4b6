"""Soak: the integer runtime on >= 100,000 inputs in batches; memory must stay flat and every
output must still verify.

    python benchmarks/soak.py [--inputs 100000] [--batch 500] [--width 32] [--out FILE.json]

One `Runtime` serves every batch (as a deployment would). Each batch is fresh seeded inputs:
random images, and every fourth batch input-quantizer tie images. Checks per batch:
- the fused fast path (`run(x)`) equals, bit for bit, the op-by-op path
  (`run(x, keep_intermediates=True)`), which shares no requantization code with it;
- every `--sample`-th batch goes through `verify_export` (DESIGN's exactness contract: every
  quantized tensor's integer code equals the fake-quant torch model's, the float tail within
  its tolerance): zero unexplained mismatches.
Memory, after each batch: the bytes that Python and numpy hold (tracemalloc; numpy reports
its array buffers to it), and the process's resident set from /proc/self/statm. A leak shows in
the first; the second also moves with the allocator's reuse of freed memory, so glibc's mmap
threshold is pinned at 1 MiB and free heap pages are handed back (malloc_trim) before each
reading (without both, the RSS wandered between 500 and 850 MiB from batch to batch). Flat
means: the peak of the last tenth of the batches exceeds that of the first tenth after
`--warmup` by at most `--max-growth-mib` (RSS) and 1 MiB (traced bytes).
"""

from __future__ import annotations

import os

# One BLAS thread: on a shared 2-core machine, BLAS threads fighting other processes made the
# runtime 8x slower (measured: 1.3 s instead of 0.16 s per 256 inputs). Set before numpy loads.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lowbit.data import NORMALIZATION  # noqa: E402
from lowbit.export.api import export_model  # noqa: E402
from lowbit.io import atomic_write_json  # noqa: E402
from lowbit.models import ModelConfig, build_model  # noqa: E402
from lowbit.quant import get_recipe  # noqa: E402
from lowbit.runtime import Runtime  # noqa: E402
from lowbit.verify.api import verify_export  # noqa: E402
from lowbit.verify.inputs import random_inputs, tie_inputs  # noqa: E402

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: measure with the allocator's defaults
        return None


def pin_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Makes glibc serve (and return to the OS) every allocation above the threshold by mmap."""
    libc = _libc()
    return bool(libc and libc.mallopt(-3, threshold_bytes))  # -3: M_MMAP_THRESHOLD


def trim_heap() -> None:
    """Returns the heap's free pages to the OS, so that RSS counts what is in use."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def rss_mib() -> float:
    """Resident set size of this process, MiB (/proc/self/statm field 2, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / 2**20


def calibrated_model(recipe: str, width: int, seed: int):
    """An untrained conv4 whose activation scales come from statistics on random inputs."""
    torch.manual_seed(seed)
    config = ModelConfig(backbone="conv4", head="cosine", num_classes=8, width=width)
    model = build_model(get_recipe(recipe), config).train()
    with torch.no_grad():
        for step in range(40):
            model(torch.from_numpy(random_inputs(32, 32, max_abs=2.0, seed=seed + step)))
    return model.eval()


def batch_inputs(index: int, size: int, description: dict) -> np.ndarray:
    if index % 4 == 3:
        return tie_inputs(
            size,
            32,
            input_scale=description["input"]["input_scale"],
            input_bits=description["input"]["input_bits"],
            seed=index,
        )
    return random_inputs(size, 32, max_abs=description["model"]["input_max_abs"], seed=index)


def soak(args: argparse.Namespace, export_dir: Path) -> dict:
    torch.set_num_threads(1)
    pinned = pin_mmap_threshold()
    model = calibrated_model(args.recipe, args.width, args.seed)
    description = export_model(
        model, export_dir, class_names=[f"c{i}" for i in range(8)], normalization=NORMALIZATION
    )
    runtime = Runtime(export_dir / "model.int.onnx")
    batches = -(-args.inputs // args.batch)
    traced: list[float] = []
    rss, verified = [], {"inputs": 0, "checked_values": 0, "mismatches": 0, "unexplained": 0}
    fused_vs_unfused_differences = 0
    started = time.perf_counter()
    for index in range(batches):
        x = batch_inputs(index, min(args.batch, args.inputs - index * args.batch), description)
        fast = runtime.run(x)
        full = runtime.run(x, keep_intermediates=True)
        for name, value in fast.items():
            fused_vs_unfused_differences += int(not np.array_equal(value, full[name]))
        del full
        if index % args.sample == 0:
            report = verify_export(
                model,
                export_dir,
                {"soak": x},
                executors=("runtime",),
                progress=False,
                write=False,
            )
            verified["inputs"] += len(x)
            for key in ("checked_values", "mismatches", "unexplained"):
                verified[key] += int(report[key])
        if index == args.warmup:
            tracemalloc.start()
        if index >= args.warmup:
            traced.append(tracemalloc.get_traced_memory()[0] / 2**20)
        trim_heap()
        rss.append(rss_mib())
        if index % max(1, batches // 20) == 0:
            print(f"batch {index + 1}/{batches}: rss {rss[-1]:.1f} MiB", flush=True)
    seconds = time.perf_counter() - started
    steady = rss[args.warmup :] or rss
    window = max(1, len(steady) // 10)
    traced = traced or [0.0]
    return {
        "inputs": args.inputs,
        "batch": args.batch,
        "batches": batches,
        "recipe": args.recipe,
        "width": args.width,
        "seconds": round(seconds, 1),
        "fused_vs_unfused_differences": fused_vs_unfused_differences,
        "verified_against_torch": verified,
        "rss_mib": {
            "mmap_threshold_pinned": pinned,
            "after_first_batch": round(rss[0], 1),
            "after_warmup": round(steady[0], 1),
            "end": round(rss[-1], 1),
            "min": round(min(rss), 1),
            "max": round(max(rss), 1),
            "first_tenth_max": round(max(steady[:window]), 1),
            "last_tenth_max": round(max(steady[-window:]), 1),
            "growth": round(max(steady[-window:]) - max(steady[:window]), 1),
        },
        "traced_mib": {
            "first_tenth_max": round(max(traced[:window]), 2),
            "last_tenth_max": round(max(traced[-window:]), 2),
            "growth": round(max(traced[-window:]) - max(traced[:window]), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--recipe", default="w1a2")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=20, help="verify every N-th batch")
    parser.add_argument("--warmup", type=int, default=5, help="batches left out of the check")
    parser.add_argument("--max-growth-mib", type=float, default=16.0)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = soak(args, Path(folder))
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    ok = (
        result["fused_vs_unfused_differences"] == 0
        and result["verified_against_torch"]["unexplained"] == 0
        and result["rss_mib"]["growth"] <= args.max_growth_mib
        and result["traced_mib"]["growth"] <= 1.0
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
