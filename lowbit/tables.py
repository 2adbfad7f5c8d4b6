"""Plain-text tables for the CLI's human-readable reports (predict, eval)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """Returns `header` and `rows` as columns two spaces apart, padded to the widest cell.

    `align` holds one letter per column, "l" or "r" (numbers read best right-aligned); columns
    past its end are left-aligned. The last column is not padded, so no line ends in spaces.
    """
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            right = i < len(align) and align[i] == "r"
            parts.append(cell.rjust(widths[i]) if right else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
