"""LogitNorm temperature sweep: w1a2 conv4 cosine head on the built-in data, one row per tau.

    python benchmarks/tau_sweep.py [--taus 0.02,0.04,0.1,0.5,1.0] [--epochs 15] [--width 64]
        [--seeds 0] [--init-epochs 0] [--out benchmarks/results/tau_sweep]

Every row has the same data, seed, epochs and learning rate; a cross-entropy row is the
reference. --init-epochs N > 0 first trains one fp32 CE run for N epochs and starts every
w1a2 row from it (the transfer path); 0 trains w1a2 from scratch. Choose tau on the validation
split (accuracy, and MSP FPR@95%TPR of val against the held-out OOD classes); test numbers are
printed beside them. Writes results.json under --out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lowbit.data import load_splits
from lowbit.io import atomic_write_json
from lowbit.train import TrainConfig, load_run, predict_logits, train
from lowbit.train.metrics import accuracy, ood_metrics


def run_one(splits, run_dir: Path, config: TrainConfig) -> dict:
    start = time.perf_counter()
    test = train(config, run_dir, splits=splits, progress=False)
    model, _ = load_run(run_dir)
    val_logits = predict_logits(model, splits.val.x)
    val_ood = ood_metrics(val_logits, predict_logits(model, splits.ood.x))
    return {
        "loss": config.loss,
        "tau": config.tau if config.loss == "logitnorm" else None,
        "seed": config.seed,
        "val_accuracy": accuracy(splits.val.y, val_logits.argmax(1)),
        "val_msp_auroc": val_ood["msp"]["auroc"],
        "val_msp_fpr95": val_ood["msp"]["fpr95"],
        "test_accuracy": test["accuracy"],
        "test_ood": test["ood"],
        "train_seconds": round(time.perf_counter() - start, 1),
    }


def _label(row: dict) -> str:
    return "ce" if row["tau"] is None else f"tau {row['tau']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taus", default="0.02,0.04,0.1,0.5,1.0")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--init-epochs", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/tau_sweep")
    args = parser.parse_args()
    out = Path(args.out)
    splits = load_splits("builtin", image_size=32)
    common = dict(backbone="conv4", head="cosine", width=args.width, data="builtin")
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        init = None
        if args.init_epochs:
            init = out / f"fp32_seed{seed}"
            fp32 = TrainConfig(
                recipe="fp32", loss="ce", epochs=args.init_epochs, seed=seed, **common
            )
            train(fp32, init, splits=splits, progress=False)
        losses = [("ce", 1.0)] + [("logitnorm", float(t)) for t in args.taus.split(",")]
        for loss, tau in losses:
            config = TrainConfig(
                recipe="w1a2",
                loss=loss,
                tau=tau,
                epochs=args.epochs,
                seed=seed,
                init=str(init) if init else None,
                **common,
            )
            name = "ce" if loss == "ce" else f"tau{tau:g}"
            row = run_one(splits, out / f"{name}_seed{seed}", config)
            results.append(row)
            msp = row["test_ood"]["msp"]
            print(
                f"{_label(row):9s} seed {seed}  val acc {row['val_accuracy']:.3f}  val msp fpr95 "
                f"{row['val_msp_fpr95']:.3f} auroc {row['val_msp_auroc']:.3f} | test acc "
                f"{row['test_accuracy']:.3f}  msp fpr95 {msp['fpr95']:.3f} auroc {msp['auroc']:.3f}"
                f"  ({row['train_seconds']} s)",
                flush=True,
            )
    atomic_write_json(out / "results.json", results)
    for label in dict.fromkeys(_label(row) for row in results):
        rows = [row for row in results if _label(row) == label]
        print(
            f"mean {label:9s} val acc {statistics.mean(r['val_accuracy'] for r in rows):.3f}  "
            f"val msp fpr95 {statistics.mean(r['val_msp_fpr95'] for r in rows):.3f}"
        )


if __name__ == "__main__":
    main()
