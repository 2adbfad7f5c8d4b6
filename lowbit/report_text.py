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


def inspect_job_text(summary: dict, verify_report: dict) -> str:
    """Returns `lowbit run --inspect`'s stage-1 summary (lowbit.jobs.inspect_job's result)."""
    from lowbit.verify.detector import format_detector_report

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    s, counts = summary, summary["test_images"]
    lines = [
        f"stage 1 on {s['texture']} (fit {s['fit_seconds']:.0f} s, verify "
        f"{s['verify_seconds']:.0f} s, inspect {s['inspect_seconds']:.0f} s: "
        f"{s['added_seconds']:.0f} s added)",
        "  "
        + format_detector_report(verify_report["detector"][s["texture"]]).replace("\n", "\n  "),
        f"  test images: {counts['good']} good, {counts['known']} of known types, "
        f"{counts['held_out']} of held-out types",
        f"  image AUROC {number(s['image_auroc'])} (known types {number(s['image_auroc_known'])}"
        f", held-out {number(s['image_auroc_held_out'])})",
        f"  false alarms on test good: {s['false_alarms_test_good']} of {counts['good']}; "
        f"defective parts flagged: {share(s['flagged_defective'])} (known "
        f"{share(s['flagged_known'])}, held-out {share(s['flagged_held_out'])})",
        f"  type accuracy on flagged known-type parts: {share(s['type_accuracy_flagged_known'])}",
        f"  time per part: good {s['ms_per_good_part']:.0f} ms, defective "
        f"{s['ms_per_defective_part']:.0f} ms",
    ]
    return "\n".join(lines)
