"""Longer fuzzing than CI runs: the property tests of the ONNX loader and the runtime with a
large hypothesis budget, counting how each example ended.

    python benchmarks/fuzz.py [--examples 1000] [--out FILE.json]

Runs tests/bad_inputs/test_fuzz.py (corrupted model files, random Quant parameters, random
small graphs with one defect) and tests/runtime/test_property.py (random small graphs vs qonnx).
Every example must end in a LowbitError or in exact agreement with qonnx's execute_onnx; any
other exception or a mismatch fails the run (hypothesis then prints the shrunk example).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers

from bad_inputs import test_fuzz  # noqa: E402
from runtime import test_property  # noqa: E402

from lowbit.io import atomic_write_json  # noqa: E402

TARGETS = {  # name -> (test, positional strategies, keyword strategies)
    "corrupted_model_files": (
        test_fuzz.test_corrupted_model_files,
        (test_fuzz.corrupted_bytes(),),
        {},
    ),
    "random_quant_parameters": (
        test_fuzz.test_random_quantizer_parameters,
        (),
        test_fuzz.QUANT_PARAMETERS,
    ),
    "random_graphs_with_a_defect": (
        test_fuzz.test_random_graphs_with_a_defect,
        test_fuzz.DAMAGED_GRAPHS,
        {},
    ),
    "random_graphs_vs_qonnx": (
        test_property.test_runtime_equals_qonnx_on_random_graphs,
        (test_property.integer_graphs(),),
        {},
    ),
}


def counting(function, calls: Counter):
    """`function` with its own signature (hypothesis reads it), counting calls."""

    @functools.wraps(function)
    def counted(*args, **kwargs):
        calls["examples"] += 1
        return function(*args, **kwargs)

    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="per target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", default=None, help="write the counts as JSON here")
    args = parser.parse_args()
    outcomes: Counter = Counter()
    original = test_fuzz.run_or_refuse

    def counted(model, x):
        result = original(model, x)
        outcomes["refused (LowbitError)" if result is None else "ran, equal to qonnx"] += 1
        return result

    test_fuzz.run_or_refuse = counted  # the tests look it up at call time
    results = {}
    for name in args.targets.split(","):
        test, positional, keywords = TARGETS[name]
        outcomes.clear()
        calls = Counter()

        inner = counting(test.hypothesis.inner_test, calls)
        budget = settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        started = time.perf_counter()
        budget(given(*positional, **keywords)(inner))()
        results[name] = {
            "examples": calls["examples"],
            "outcomes": dict(outcomes) or {"ran, equal to qonnx": calls["examples"]},
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{name}: {results[name]}", flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
