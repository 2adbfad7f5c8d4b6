"""Words for the results the CLI prints without --json: the main job's summary."""

from __future__ import annotations


def ood_summary(metrics: dict) -> str:
    """Returns "<deployed score> (deployed) AUROC a, FPR@95%TPR f; MSP AUROC a, FPR95 f"."""
    deployed = metrics.get("ood_default") or "msp"
    parts = []
    for name in dict.fromkeys([deployed, "msp"]):
        entry = metrics["ood"][name]
        label = f"{name} (deployed)" if name == deployed else name.upper()
        parts.append(f"{label} AUROC {entry['auroc']:.3f}, FPR@95%TPR {entry['fpr95']:.3f}")
    return "; ".join(parts)


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
