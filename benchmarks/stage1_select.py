"""Choose stage 1's settings on validation data only, then read the test set once.

    python benchmarks/stage1_select.py --run runs/.../seed0/w2a2 --out runs/stage1_select
    python benchmarks/stage1_select.py --run runs/.../seed0/w2a2 --out runs/stage1_select \\
        --split test --candidates backbone.blocks.2.act/3

Data, per texture, all generated in memory by the built-in whole-image generator
(lowbit/data/whole.py, 128 px):
- fit: the first --fit-images train/good images of seed 0 (what `make_whole_images` writes);
- validation (`--split val`): --val-good clean images and --val-per-type images of every
  *known* defect type (burn and fold never drawn), all of seed 1 (`whole_image_rng(1, ...)`),
  so none of them is a test image;
- test (`--split test`): seed 0's test/good (20) and test/<type> (10 each), held-out types
  included, exactly what `make_whole_images(seed=0)` writes.

A candidate is `layer/k[+layer/k...]@bank`: each part is the trunk tensor summed over k x k
(lowbit.detect.aggregate), brought to the first part's map size by integer ops (a 2x2 block
sum for a finer map, nearest repetition for a coarser one) and concatenated along channels;
the bank keeps at most `bank` entries (coreset). Everything stays integer for the quantized
trunks; the fp32 run (`--run .../fp32`, float features by forward hooks) uses the same
assembly on floats and a float bank, as a reference only.
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

from lowbit.core.scores import auroc
from lowbit.data import BUILTIN_CLASSES, BUILTIN_UNKNOWN, to_tensor_array
from lowbit.data.whole import generate_whole_image, whole_image_rng
from lowbit.detect.aggregate import aggregate, aggregated_range
from lowbit.detect.maps import upsample_nearest
from lowbit.detect.memory_bank import anomaly_map, fit_memory_bank, image_scores
from lowbit.detect.trunk import cut_trunk, trunk_code_range

log = logging.getLogger("stage1_select")
SIZE = 128
KNOWN = tuple(t for t in BUILTIN_CLASSES if t not in BUILTIN_UNKNOWN)
DEFAULT_CANDIDATES = (
    "blocks.0.pool/1 blocks.0.pool/3 blocks.1.act/1 blocks.1.act/3 "
    "blocks.1.pool/1 blocks.1.pool/3 blocks.1.pool/5 blocks.2.act/1 blocks.2.act/3 "
    "blocks.2.act/5 blocks.2.pool/1 blocks.2.pool/3 blocks.2.pool/5 "
    "blocks.1.pool/3+blocks.2.act/3 blocks.1.pool/3+blocks.2.pool/3 "
    "blocks.2.act/3+blocks.2.pool/3"
)


def generate(texture: str, seed: int, folder: str, count: int, defect: str | None):
    """Return (images uint8 [n, S, S, 3], masks bool [n, S, S]) of one generated folder."""
    pairs = [
        generate_whole_image(whole_image_rng(seed, texture, folder, i), texture, defect, SIZE)
        for i in range(count)
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_split(texture: str, split: str, args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images, masks, type names) of the validation or the test split."""
    if split == "val":
        seed, n_good, n_defect, types = 1, args.val_good, args.val_per_type, KNOWN
    else:
        seed, n_good, n_defect, types = 0, 20, 10, BUILTIN_CLASSES
    parts = [(generate(texture, seed, "test/good", n_good, None), "good")]
    parts += [(generate(texture, seed, f"test/{t}", n_defect, t), t) for t in types]
    images = np.concatenate([p[0][0] for p in parts])
    masks = np.concatenate([p[0][1] for p in parts])
    names = np.concatenate([[name] * len(p[0][0]) for p, name in zip(parts, [n for _, n in parts])])
    return images, masks, names


class Trunk:
    """Features of trunk tensors: integer codes (model.int.onnx) or floats (fp32 hooks)."""

    def __init__(self, run: Path, layers: list[str]):
        self.layers = layers
        self.is_float = not (run / "model.int.onnx").is_file()
        if self.is_float:
            from lowbit.train import load_run

            self.model, _ = load_run(run)
        else:
            from lowbit.runtime import Runtime

            model = onnx.load(run / "model.int.onnx")
            cut = cut_trunk(model, layers, SIZE, SIZE)
            self.runtime = Runtime(cut)
            self.ranges = {name: trunk_code_range(cut, name) for name in layers}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = to_tensor_array(images)
        if not self.is_float:
            codes = self.runtime.run(x, batch_size=16)
            return {name: codes[name].astype(np.int8) for name in self.layers}
        import torch

        found: dict[str, list] = {name: [] for name in self.layers}
        modules = dict(self.model.named_modules())
        hooks = [
            modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: found[name].append(out.detach().numpy())
            )
            for name in self.layers
        ]
        with torch.no_grad():
            for start in range(0, len(x), 16):
                self.model.backbone(torch.from_numpy(x[start : start + 16]))
        for hook in hooks:
            hook.remove()
        return {name: np.concatenate(found[name]).astype(np.float32) for name in self.layers}


def parse(candidate: str) -> tuple[list[tuple[str, int]], int]:
    """Return ([(tensor, k), ...], bank size) of `layer/k+layer/k@bank`."""
    spec, _, bank = candidate.partition("@")
    parts = []
    for part in spec.split("+"):
        name, _, k = part.partition("/")
        parts.append((name if name.startswith("backbone.") else f"backbone.{name}", int(k or 1)))
    return parts, int(bank or 2000)


def box_sum(features: np.ndarray, k: int) -> np.ndarray:
    """Return k x k zero-padded window sums of float features (aggregate()'s float twin)."""
    if k == 1:
        return features
    _, _, h, w = features.shape
    before, after = k // 2, k - 1 - k // 2
    padded = np.pad(features, ((0, 0), (0, 0), (before, after), (before, after)))
    return sum(padded[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k))


def to_size(features: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Return (features at size x size, the factor its values grew by): block sums or repeats."""
    h = features.shape[2]
    if h > size:
        f = h // size
        n, c = features.shape[:2]
        return features.reshape(n, c, size, f, size, f).sum(axis=(3, 5)), f * f
    f = size // h
    return features.repeat(f, axis=2).repeat(f, axis=3), 1


def assemble(features: dict, parts, trunk: Trunk) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Return (patch features [N, C, h, w], integer code range or None for floats)."""
    size = features[parts[0][0]].shape[2]
    pieces, lows, highs = [], [], []
    for name, k in parts:
        summed = box_sum(features[name], k) if trunk.is_float else aggregate(features[name], k)
        summed, grown = to_size(summed, size)
        pieces.append(summed)
        if not trunk.is_float:
            low, high = aggregated_range(trunk.ranges[name], k)
            lows.append(low * grown)
            highs.append(high * grown)
    joined = np.concatenate(pieces, axis=1)
    return joined, (None if trunk.is_float else (min(lows), max(highs)))


def float_bank(vectors: np.ndarray, max_entries: int) -> np.ndarray:
    """Return the greedy k-center coreset of float patch vectors (fit_memory_bank's float twin)."""
    vectors = vectors.astype(np.float32)
    if len(vectors) <= max_entries:
        return vectors
    squares = np.einsum("ij,ij->i", vectors, vectors)
    nearest = squares - 2 * vectors @ vectors[0] + squares[0]
    picks = [0]
    while len(picks) < max_entries:
        pick = int(np.argmax(nearest))
        picks.append(pick)
        np.minimum(nearest, squares - 2 * vectors @ vectors[pick] + squares[pick], out=nearest)
    return vectors[picks]


def float_map(bank: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Return the float anomaly map [N, h, w]: squared distance to the nearest bank entry."""
    n, c, h, w = features.shape
    queries = np.moveaxis(features, 1, -1).reshape(-1, c).astype(np.float32)
    bank_sq = np.einsum("ij,ij->i", bank, bank)
    best = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), 4096):
        q = queries[start : start + 4096]
        best[start : start + 4096] = np.einsum("ij,ij->i", q, q) - (2 * q @ bank.T - bank_sq).max(
            axis=1
        )
    return np.maximum(best, 0).reshape(n, h, w)


def evaluate(maps: np.ndarray, masks: np.ndarray, names: np.ndarray) -> dict:
    """Return image and pixel AUROC per group (known, held-out) and image AUROC per type."""
    scores = image_scores(maps) if maps.dtype.kind == "i" else maps.reshape(len(maps), -1).max(1)
    pixels = upsample_nearest(maps, SIZE, SIZE)
    good = names == "good"
    row = {}
    groups = {"known": np.isin(names, KNOWN), "held_out": np.isin(names, BUILTIN_UNKNOWN)}
    for group, members in groups.items():
        if not members.any():
            continue
        row[f"image_auroc_{group}"] = auroc(-scores[good], -scores[members])
        chosen = good | members
        values, truth = pixels[chosen].ravel(), masks[chosen].ravel()
        row[f"pixel_auroc_{group}"] = auroc(-values[~truth], -values[truth])
    row["by_type"] = {
        t: auroc(-scores[good], -scores[names == t]) for t in BUILTIN_CLASSES if (names == t).any()
    }
    return row


def run_texture(texture: str, trunk: Trunk, candidates: list[str], args) -> list[dict]:
    """Return one row per candidate for one texture."""
    fit_images, _ = generate(texture, 0, "train/good", args.fit_images, None)
    if args.bank_flips:  # the fit images mirrored left-right and up-down join the bank's pool
        fit_images = np.concatenate(
            [fit_images, fit_images[:, :, ::-1], fit_images[:, ::-1], fit_images[:, ::-1, ::-1]]
        )
    images, masks, names = make_split(texture, args.split, args)
    fit_features = trunk(fit_images)
    # --test-flips: each image is also seen mirrored (left-right, up-down, both); the maps of the
    # mirrored images, mirrored back, are added to the image's own (integers: an exact sum)
    flips = ((), (2,), (1,), (1, 2)) if args.test_flips else ((),)
    seen = [trunk(np.flip(images, axes) if axes else images) for axes in flips]
    rows = []
    for candidate in candidates:
        started = time.perf_counter()
        parts, bank_size = parse(candidate)
        fit_patches, code_range = assemble(fit_features, parts, trunk)
        if trunk.is_float:
            c = fit_patches.shape[1]
            vectors = np.unique(np.moveaxis(fit_patches, 1, -1).reshape(-1, c), axis=0)
            bank = float_bank(vectors, bank_size)
        else:
            bank = fit_memory_bank(fit_patches, bank_size, code_range)
        maps = 0
        for axes, features in zip(flips, seen):
            patches, _ = assemble(features, parts, trunk)
            one = (
                float_map(bank, patches)
                if trunk.is_float
                else anomaly_map(bank, patches, code_range)
            )
            maps = maps + (np.flip(one, axes) if axes else one)  # map axes: [N, h, w]
        row = {"texture": texture, "candidate": candidate, "map": maps.shape[1]}
        row |= evaluate(maps, masks, names)
        row["seconds"] = round(time.perf_counter() - started, 1)
        log.info("%s %s %s", texture, candidate, {k: v for k, v in row.items() if k != "by_type"})
        rows.append(row)
    return rows


def rank(rows: list[dict]) -> list[tuple[str, float, float]]:
    """Return (candidate, mean image AUROC, mean pixel AUROC) over textures, best first."""
    by_candidate: dict[str, list[dict]] = {}
    for row in rows:
        by_candidate.setdefault(row["candidate"], []).append(row)
    means = [
        (
            name,
            float(np.mean([r["image_auroc_known"] for r in group])),
            float(np.mean([r["pixel_auroc_known"] for r in group])),
        )
        for name, group in by_candidate.items()
    ]
    return sorted(means, key=lambda m: (-m[1], -m[2]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run dir (export or fp32 run)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--textures", default="brick,grass,gravel")
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="space-separated")
    parser.add_argument("--fit-images", type=int, default=100)
    parser.add_argument("--val-good", type=int, default=30)
    parser.add_argument("--val-per-type", type=int, default=6)
    parser.add_argument("--tag", default=None, help="output file name part (default: run name)")
    parser.add_argument(
        "--test-flips",
        action="store_true",
        help="add the maps of each scored image's three flips, flipped back, to its own",
    )
    parser.add_argument(
        "--bank-flips",
        action="store_true",
        help="fit the bank on the fit images and their three flips (4x the patch pool)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    candidates = args.candidates.split()
    layers = sorted({name for c in candidates for name, _ in parse(c)[0]})
    trunk = Trunk(args.run, layers)
    rows = [
        row
        for texture in args.textures.split(",")
        for row in run_texture(texture, trunk, candidates, args)
    ]
    tag = args.tag or args.run.name
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.split}_{tag}.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        groups = " ".join(
            f"{row.get(f'{kind}_auroc_{g}', float('nan')):.3f}"
            for g in ("known", "held_out")
            for kind in ("image", "pixel")
        )
        print(f"{row['texture']:<7} {row['candidate']:<45} {groups}")
    print("mean over textures (image, pixel AUROC, known types), best first:")
    for name, image, pixel in rank(rows):
        print(f"{name:<45} {image:.3f} {pixel:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
