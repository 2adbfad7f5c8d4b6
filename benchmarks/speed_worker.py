"""A fresh process timing one executor: `python benchmarks/speed_worker.py SPEC`.

It loads the executor, runs one pass over the inputs, prints "ready", then for each line N on
stdin runs one untimed pass (the other workers' turns have evicted its data from the caches)
and N timed ones, and prints {"cpu_ms": [...], "wall_ms": [...]}, per image of each pass; on 0
(or end of input) it prints {"foreign_modules": [...]}, the heavy modules it found loaded,
which must be none. runtime_speed.py's `take_turns` drives several at once (runtime_speed.py
and c_speed.py).

SPEC is JSON: kind ("c", "runtime" or "onnxruntime"), model (the .so, model.int.onnx or an ONNX
file), inputs (a .npy of float32 images), batch (1: one call per image; else one call on all),
threads (onnxruntime's intra-op threads; 0 = its default), classes (for "c"). The process
imports numpy and that executor only; CPU time counts every thread of the process.
"""

from __future__ import annotations

import json
import sys
import time

HEAVY_MODULES = ("torch", "brevitas", "qonnx", "onnxruntime", "scipy", "PIL")


def executor(spec: dict, x):
    """fn() running the executor over every image of x, one call per image or per batch."""
    images = [x[i : i + 1] for i in range(len(x))] if spec["batch"] == 1 else [x]
    if spec["kind"] == "c":
        import ctypes

        from lowbit.targets.c.run import CModel

        model = CModel(spec["model"], spec["classes"])
        pointers = [x[i].ctypes.data for i in range(len(x))]
        result, scratch, infer = ctypes.byref(model.result), model.scratch, model.infer
        return lambda: [infer(pointer, result, scratch) for pointer in pointers]
    if spec["kind"] == "runtime":
        from lowbit.runtime import Runtime

        runtime = Runtime(spec["model"])
        return lambda: [runtime.run(image) for image in images]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: [session.run(None, {name: image}) for image in images]


def timed_passes(run, images: int, count: int) -> tuple[list[float], list[float]]:
    """CPU and wall ms per image of `count` passes of run()."""
    cpu, wall = [], []
    for _ in range(count):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        run()
        cpu.append((time.process_time() - start_cpu) * 1000 / images)
        wall.append((time.perf_counter() - start_wall) * 1000 / images)
    return cpu, wall


def foreign_modules(spec: dict) -> list[str]:
    return sorted(
        {m.split(".")[0] for m in sys.modules}
        & set(HEAVY_MODULES) - {"onnxruntime" if spec["kind"] == "onnxruntime" else ""}
    )


def main() -> None:
    import numpy as np

    spec = json.loads(sys.argv[1])
    x = np.load(spec["inputs"])
    run = executor(spec, x)
    run()  # warm-up: first-call allocations and lazy initialization
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line)
        if count == 0:
            break
        run()
        cpu, wall = timed_passes(run, len(x), count)
        print(json.dumps({"cpu_ms": cpu, "wall_ms": wall}), flush=True)
    print(json.dumps({"foreign_modules": foreign_modules(spec)}), flush=True)


if __name__ == "__main__":
    main()
