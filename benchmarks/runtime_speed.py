"""Inference speed of exported models, each executor timed in its own fresh process.

    python benchmarks/runtime_speed.py --export DIR [--export DIR ...] [--calibrated w2a2]
        [--threads 1] [--repeats 30] [--rounds 3] [--block 3] [--out benchmarks/results/speed]

Models: each export folder (model.int.onnx, model.qcdq.onnx, model.json) and, with
`--calibrated RECIPE`, a conv4-64 at 32x32 calibrated on random data and exported here (speed
does not depend on training). Per model one input file per batch size (1 and 64, uniform in
[-2, 2], saved as .npy) feeds every executor:
- lowbit's integer runtime on model.int.onnx, in a process that imports numpy and
  lowbit.runtime only (benchmarks/speed_worker.py; checked: the worker reports any other heavy
  module it finds loaded);
- onnxruntime on model.qcdq.onnx (default graph optimizations, as users run it), in a process
  that imports onnxruntime and numpy only;
- onnxruntime on the plain fp32 graph of the same architecture (random weights, exported with
  torch.onnx here).
Every process gets the same thread count (`OMP/OPENBLAS/MKL_NUM_THREADS`, onnxruntime's
intra-op threads); it loads the model, runs once, then times `--repeats` runs (ten times as
many at batch 1). The three processes of a round start together and take turns, `--block` runs
at a time (ten times as many at batch 1) after one untimed run, with a short pause before each
turn and one process running at any moment: this machine's speed changes in stretches of
0.1–2 s (a process alone swings between 0.55 and 0.85 ms per batch-1 run), and taking turns
makes every executor sample the same stretches. The table
gives, per executor and batch, the median over `--rounds` rounds of each process's median, and
the ratios against both onnxruntime rows of the same rounds. Also timed: `lowbit predict EXPORT IMG
--whole-image` on one image, a subprocess of the installed CLI, from start to exit (import and
load included), with the check that it imports no torch (`python -X importtime`). Writes
speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCHES = (1, 64)
TURN_PAUSE_S = 0.1
"""Idle time before each turn: onnxruntime's pool threads spin for a while after a run, and with
two threads per process they took the next process's second core (onnxruntime fp32 at batch
64 measured 16.5 ms with no pause, 9.7 ms with this one, 8.3 ms running alone)."""
EXECUTORS = {  # name -> (worker, graph file in the model's folder)
    "lowbit runtime": ("runtime", "model.int.onnx"),
    "onnxruntime QCDQ": ("onnxruntime", "model.qcdq.onnx"),
    "onnxruntime fp32": ("onnxruntime", "fp32.onnx"),
}


def machine() -> str:
    """The CPU model (Linux /proc/cpuinfo, else `platform`) and the number of usable cores."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


def time_interleaved(
    jobs: list[tuple[str, Path]], inputs: Path, repeats: int, block: int, threads: int
) -> list[list[float]]:
    """Milliseconds per call on the whole of `inputs`, `repeats` calls of each (kind, model)
    taking turns `block` calls at a time (`take_turns`)."""
    import numpy as np

    images = len(np.load(inputs, mmap_mode="r"))
    specs = [
        {"kind": kind, "model": str(model), "inputs": str(inputs), "batch": images}
        | {"threads": threads}
        for kind, model in jobs
    ]
    counts = [min(block, repeats - start) for start in range(0, repeats, block)]
    replies = take_turns(specs, counts, threads)
    return [[ms * images for reply in worker for ms in reply["wall_ms"]] for worker in replies]


def take_turns(specs: list[dict], counts: list[int], threads: int) -> list[list[dict]]:
    """Each spec's executor in a fresh speed_worker.py process of its own: the processes start
    together, then take turns, one running at any moment, the others waiting on their stdin.
    For each count, every process in turn (the order rotating from count to count, a pause of
    TURN_PAUSE_S before each turn) times that many passes, so that all of them sample the same
    stretches of the machine's speed. Returns each process's replies, one per count."""
    worker = Path(__file__).with_name("speed_worker.py")
    workers: list[Worker] = []
    try:
        for spec in specs:
            command = [sys.executable, str(worker), json.dumps(spec)]
            workers.append(Worker(f"{spec['kind']} on {spec['model']}", command, threads))
        for process in workers:
            process.reply()  # "ready"
        replies: list[list[dict]] = [[] for _ in workers]
        for index, count in enumerate(counts):
            for offset in range(len(workers)):
                turn = (index + offset) % len(workers)
                time.sleep(TURN_PAUSE_S)
                replies[turn].append(json.loads(workers[turn].ask(str(count))))
        for process in workers:
            foreign = json.loads(process.ask("0"))["foreign_modules"]
            if foreign:
                raise RuntimeError(f"{process.label} imported {foreign}")
        return replies
    finally:
        for process in workers:
            process.close()


class Worker:
    """A speed_worker.py process, talked to line by line."""

    def __init__(self, label: str, command: list[str], threads: int) -> None:
        self.label = label
        self._errors = tempfile.TemporaryFile(mode="w+")  # a full stderr pipe would block it
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            env=thread_env(threads),
        )

    def ask(self, line: str) -> str:
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        return self.reply()

    def reply(self) -> str:
        """The worker's next line, or a RuntimeError with its stderr if it died."""
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=60)
            self._errors.seek(0)
            raise RuntimeError(f"{self.label}: {self._errors.read().strip()[-2000:]}")
        return line.strip()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()  # the worker's loop ends at end of input
                self._process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._errors.close()


def fp32_graph(model_json: dict, path: Path) -> None:
    """The fp32 graph of the model's architecture (random weights), as torch exports it."""
    import torch

    from lowbit.models import ModelConfig, build_model
    from lowbit.quant import get_recipe

    config = ModelConfig(**model_json["model"])
    model = build_model(get_recipe("fp32"), config).eval()
    shape = model_json["input"]["shape"]
    torch.onnx.export(
        model,
        torch.zeros(1, *shape),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )


def calibrated_export(recipe: str, out_dir: Path) -> None:
    """A conv4-64 at 32x32 for `recipe`, BN statistics from random data, exported to out_dir."""
    import torch

    from lowbit.export.api import export_model
    from lowbit.models import ModelConfig, build_model
    from lowbit.quant import get_recipe

    torch.manual_seed(0)
    model = build_model(get_recipe(recipe), ModelConfig(backbone="conv4", num_classes=8))
    model.train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(32, 3, 32, 32))
    export_model(
        model.eval(),
        out_dir,
        class_names=[f"c{i}" for i in range(8)],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )


def lowbit_cli() -> list[str]:
    script = Path(sys.executable).with_name("lowbit")
    if script.is_file():
        return [str(script)]
    found = shutil.which("lowbit")
    return [found] if found else [sys.executable, "-m", "lowbit"]


def time_predict(export: Path, image: Path, rounds: int, threads: int) -> dict:
    """Wall time of `lowbit predict EXPORT IMAGE --whole-image` and whether it imports torch."""
    command = [*lowbit_cli(), "predict", str(export), str(image), "--whole-image"]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run(
            command, capture_output=True, text=True, env=thread_env(threads), check=False
        )
        times.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()[-2000:]}")
    probe = [sys.executable, "-X", "importtime", "-m", "lowbit", *command[-4:]]
    imports = subprocess.run(probe, capture_output=True, text=True, env=thread_env(threads))
    imported = {line.split("|")[-1].strip() for line in imports.stderr.splitlines() if "|" in line}
    return {
        "command": " ".join(["lowbit", *command[-4:]]),
        "median_ms": statistics.median(times),
        "imports_torch": any(m.split(".")[0] == "torch" for m in imported),
    }


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Model folders by label: the exports, and the calibrated one; each gets fp32.onnx and
    its inputs (inputs_1.npy, inputs_64.npy) and an image for predict, in a private copy."""
    import numpy as np
    from PIL import Image

    models = {}
    for export in args.export:
        source = Path(export)
        label = f"{json.loads((source / 'model.json').read_text())['recipe']['name']} trained"
        folder = work / label.replace(" ", "_")
        shutil.copytree(source, folder)
        models[label] = folder
    if args.calibrated:
        folder = work / f"{args.calibrated}_calibrated"
        calibrated_export(args.calibrated, folder)
        models[f"{args.calibrated} calibrated"] = folder
    for folder in models.values():
        model_json = json.loads((folder / "model.json").read_text())
        fp32_graph(model_json, folder / "fp32.onnx")
        shape = model_json["input"]["shape"]
        x = np.random.default_rng(0).uniform(-2, 2, (max(BATCHES), *shape)).astype(np.float32)
        for batch in BATCHES:
            np.save(folder / f"inputs_{batch}.npy", x[:batch])
        pixels = np.random.default_rng(1).integers(0, 256, (*shape[1:], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "image.png")
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="append", default=[], help="export folder (repeat)")
    parser.add_argument(
        "--calibrated", default="w2a2", help="recipe of a calibrated conv4-64, or '' for none"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of every process")
    parser.add_argument(
        "--repeats", type=int, default=30, help="timed runs per process (ten times at batch 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="processes per executor and batch")
    parser.add_argument(
        "--block", type=int, default=3, help="runs per turn of a process (ten times at batch 1)"
    )
    parser.add_argument("--out", default="benchmarks/results/speed", help="folder of speed.json")
    args = parser.parse_args()
    if not args.export and not args.calibrated:
        parser.error("nothing to time: give --export DIR or --calibrated RECIPE")
    rows, predict_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = prepare(args, Path(tmp))
        for label, folder in models.items():
            measured: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for batch in BATCHES:
                    jobs = [(kind, folder / graph) for kind, graph in EXECUTORS.values()]
                    repeats = args.repeats * (10 if batch == 1 else 1)
                    block = max(1, args.block * (10 if batch == 1 else 1))
                    inputs = folder / f"inputs_{batch}.npy"
                    times = time_interleaved(jobs, inputs, repeats, block, args.threads)
                    for name, runs in zip(EXECUTORS, times):
                        measured.setdefault((name, batch), []).append(statistics.median(runs))
            for batch in BATCHES:
                ms = {name: statistics.median(measured[name, batch]) for name in EXECUTORS}
                for name in EXECUTORS:
                    rows.append(
                        {
                            "model": label,
                            "batch": batch,
                            "executor": name,
                            "median_ms": round(ms[name], 3),
                            "vs_onnxruntime_qcdq": round(ms[name] / ms["onnxruntime QCDQ"], 2),
                            "vs_onnxruntime_fp32": round(ms[name] / ms["onnxruntime fp32"], 2),
                        }
                    )
            predict = time_predict(folder, folder / "image.png", args.rounds, args.threads)
            predict_rows.append({"model": label, **predict})
    from lowbit.io import atomic_write_json

    atomic_write_json(
        Path(args.out) / "speed.json",
        {
            "machine": machine(),
            "threads": args.threads,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "block": args.block,
            "rows": rows,
            "predict": predict_rows,
        },
    )
    print(
        f"{machine()}; {args.threads} thread(s) per process; median over {args.rounds} "
        f"processes of each one's median of {args.repeats} runs ({args.repeats * 10} at batch 1), "
        f"the executors' processes taking turns {args.block} runs at a time "
        f"({args.block * 10} at batch 1)\n"
    )
    print("| model | batch | executor | median ms | vs onnxruntime QCDQ | vs onnxruntime fp32 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['batch']} | {row['executor']} | {row['median_ms']:.2f} "
            f"| {row['vs_onnxruntime_qcdq']:.2f} | {row['vs_onnxruntime_fp32']:.2f} |"
        )
    print("\n| model | `lowbit predict` on one image, start to exit (ms) | imports torch |")
    print("|---|---|---|")
    for row in predict_rows:
        torch_imported = "yes" if row["imports_torch"] else "no"
        print(f"| {row['model']} | {row['median_ms']:.0f} | {torch_imported} |")


if __name__ == "__main__":
    main()
