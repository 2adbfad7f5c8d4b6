"""The full exactness matrix: every recipe x backbone x head, zero mismatches expected.

    python benchmarks/verify_matrix.py [--n 1000] [--random 1000] [--float-scales]
        [--recipes w1a1,...] [--out benchmarks/results/matrix]

Models are untrained but calibrated (activation statistics collected on real training images),
then given random BatchNorm parameters: one zero-slope and one negative-slope channel per layer.
Each is exported and verified on >= n real built-in test images, `random` random images,
input-quantizer tie images and first-layer threshold (boundary) images, across the integer
runtime, onnxruntime (QCDQ) and qonnx (QONNX). Power-of-two scales must give zero mismatches;
--float-scales verifies the same matrix with float scales, where the contract is zero
*unexplained* mismatches. Writes matrix.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowbit.artifacts import GRAPH_FILES
from lowbit.data import NORMALIZATION, load_splits
from lowbit.export.api import export_model
from lowbit.io import atomic_write_json
from lowbit.models import ModelConfig, build_model
from lowbit.quant import get_recipe
from lowbit.verify.api import build_inputs, load_graph, verify_export

RECIPES = ("w1a1", "w1a2", "w2a2", "w2a4", "w4a4", "w8a8")
WIDTHS = {"conv4": 32, "resnet8": 16}


def calibrated(
    recipe: str, backbone: str, head: str, images: np.ndarray, seed: int, pow2: bool = True
):
    torch.manual_seed(seed)
    config = ModelConfig(backbone=backbone, head=head, num_classes=8, width=WIDTHS[backbone])
    model = build_model(get_recipe(recipe, pow2_scales=pow2), config).train()
    with torch.no_grad():
        for start in range(0, 40 * 32, 32):
            index = np.arange(start, start + 32) % len(images)
            model(torch.from_numpy(images[index]))
        rng = np.random.default_rng(seed)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                gamma = rng.uniform(-1.5, 1.5, module.num_features)
                gamma[0], gamma[1] = 0.0, -abs(gamma[1]) - 0.1
                module.weight.copy_(torch.tensor(gamma))
                module.bias.copy_(torch.tensor(rng.normal(0, 0.5, module.num_features)))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--random", type=int, default=1000)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--float-scales", action="store_true", help="non-power-of-two scales")
    parser.add_argument("--out", default="benchmarks/results/matrix")
    args = parser.parse_args()
    per_class = max(120, int(np.ceil(args.n / 8 / 0.25)) + 1)
    splits = load_splits("builtin", per_class=per_class)
    rows = []
    for recipe in args.recipes.split(","):
        for backbone in ("conv4", "resnet8"):
            for head in ("cosine", "linear"):
                start = time.perf_counter()
                pow2 = not args.float_scales
                model = calibrated(recipe, backbone, head, splits.train.x, seed=0, pow2=pow2)
                with tempfile.TemporaryDirectory() as tmp:
                    description = export_model(
                        model,
                        tmp,
                        class_names=list(splits.class_names),
                        normalization=NORMALIZATION,
                    )
                    inputs = build_inputs(
                        description,
                        splits.test.x,
                        n=args.n,
                        random=args.random,
                        ties=True,
                        seed=0,
                        int_graph=load_graph(Path(tmp) / GRAPH_FILES["int"]),
                    )
                    report = verify_export(model, tmp, inputs, progress=False)
                row = {
                    "recipe": recipe,
                    "backbone": backbone,
                    "head": head,
                    "inputs": report["inputs"],
                    "checked_values": report["checked_values"],
                    "mismatches": report["mismatches"],
                    "unexplained": report["unexplained"],
                    "scales": "power-of-two" if pow2 else "float",
                    "seconds": round(time.perf_counter() - start, 1),
                }
                rows.append(row)
                print(
                    f"| {recipe} | {backbone} | {head} | {sum(row['inputs'].values())} | "
                    f"{row['checked_values']:,} | {row['mismatches']} | {row['unexplained']} |",
                    flush=True,
                )
    atomic_write_json(Path(args.out) / "matrix.json", rows)


if __name__ == "__main__":
    print("| recipe | backbone | head | inputs | codes checked | mismatches | unexplained |")
    print("|---|---|---|---|---|---|---|")
    main()
