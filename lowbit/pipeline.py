"""The main job (`lowbit run`): fp32 pre-training, w1a2 QAT, evaluation, export, verification."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Epochs chosen so that `lowbit run` finishes in about 5 minutes on 2 CPU cores.
FP32_EPOCHS = 15
QAT_EPOCHS = 15


def is_trained(run_dir: Path, config, splits=None) -> bool:
    """True when run_dir holds metrics.json of a finished run with this config; ConfigError
    (naming its config.json) when that run was trained on other data than `splits` (None:
    config.data, loaded only when the run records a fingerprint to check)."""
    from lowbit.train import TrainConfig
    from lowbit.train.loop import load_data
    from lowbit.train.run import check_same_data

    config_path = run_dir / "config.json"
    if not ((run_dir / "metrics.json").is_file() and config_path.is_file()):
        return False
    record = json.loads(config_path.read_text())
    saved = record.get("train")
    if not isinstance(saved, dict):
        return False
    if TrainConfig.with_defaults(saved) != config.resolved().to_dict():
        return False
    if record.get("data_fingerprint") is not None:
        splits = load_data(config.resolved()) if splits is None else splits
        check_same_data(record, splits, config_path)
    return True


def train_or_reuse(config, run_dir: Path, progress: bool = True, *, splits=None) -> dict:
    """Returns run_dir's metrics: reused when finished with this config, else trained (resumed
    from its checkpoint when one exists). `splits` replaces loading config.data."""
    from lowbit.train import train

    if is_trained(run_dir, config, splits):
        log.info("reusing finished run %s", run_dir)
        return json.loads((run_dir / "metrics.json").read_text())
    resume = (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.json").is_file()
    return train(config, run_dir, splits=splits, resume=resume, progress=progress)


_train_or_reuse = train_or_reuse  # the name benchmarks/ scripts import


def ood_summary(metrics: dict) -> str:
    """Returns "<deployed score> (deployed) AUROC a, FPR@95%TPR f; MSP AUROC a, FPR95 f"."""
    deployed = metrics.get("ood_default") or "msp"
    parts = []
    for name in dict.fromkeys([deployed, "msp"]):
        entry = metrics["ood"][name]
        label = f"{name} (deployed)" if name == deployed else name.upper()
        parts.append(f"{label} AUROC {entry['auroc']:.3f}, FPR@95%TPR {entry['fpr95']:.3f}")
    return "; ".join(parts)


def run_main_job(out: Path, *, quick: bool = False, progress: bool = True) -> dict:
    """Trains fp32 then w1a2 (conv4, cosine, LogitNorm), exports, verifies; returns both runs'
    metrics, the deployed size and verify's counts (`main_job_text` words them; the full
    verify report is <out>/w1a2/verify.json)."""
    from lowbit.artifacts import deployed_bits_of
    from lowbit.train import TrainConfig
    from lowbit.workflow import export_run, verify_run

    fp32_epochs, qat_epochs = (1, 1) if quick else (FP32_EPOCHS, QAT_EPOCHS)
    common = dict(backbone="conv4", head="cosine", loss="logitnorm", seed=0, data="builtin")
    if quick:
        common.update(width=16, per_class=120)
    fp32_dir, qat_dir = out / "fp32", out / "w1a2"
    fp32 = _train_or_reuse(
        TrainConfig(recipe="fp32", epochs=fp32_epochs, **common), fp32_dir, progress
    )
    qat_config = TrainConfig(recipe="w1a2", epochs=qat_epochs, init=str(fp32_dir), **common)
    qat = _train_or_reuse(qat_config, qat_dir, progress)
    _, description = export_run(qat_dir)
    report = verify_run(
        qat_dir, n=200 if quick else 1000, random=64 if quick else 1000, progress=progress
    )
    return {
        "out": str(out),
        "epochs": {"fp32": fp32_epochs, "w1a2": qat_epochs},
        "fp32": fp32,
        "w1a2": qat,
        "deployed_bits": deployed_bits_of(description)["total"],
        "verify": {
            k: report[k] for k in ("checked_tensors", "checked_values", "mismatches", "unexplained")
        },
    }


def main_job_text(result: dict, verify_report: dict) -> str:
    """Returns `lowbit run`'s summary of `run_main_job`'s result and the full verify report."""
    from lowbit.verify.api import format_report

    fp32, qat, epochs = result["fp32"], result["w1a2"], result["epochs"]
    lines = [
        f"lowbit run: conv4 cosine head, LogitNorm, built-in defect data ({result['out']})",
        f"  fp32 pre-training ({epochs['fp32']} epochs) accuracy {fp32['accuracy']:.3f}; "
        f"w1a2 after {epochs['w1a2']} more epochs of QAT: {qat['accuracy']:.3f}",
    ]
    if qat.get("ood"):
        lines.append(f"  w1a2 unknown-defect detection: {ood_summary(qat)}")
    bits = result["deployed_bits"]
    lines.append(f"  deployed model: {bits:,} bits ({bits / 8 / 1024:.1f} KiB)")
    lines.append(format_report(verify_report))
    return "\n".join(lines)
