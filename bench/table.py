"""A benchmark row and the table printer (no TensorFlow here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ("name", "measured", "baseline", "ratio", "target", "ok")


@dataclass
class Row:
    """One figure: `measured` against `baseline` (same unit), their ratio, and the target."""

    name: str
    measured: float
    baseline: float
    unit: str
    target: str = "report"
    ok: bool | None = None  # None: no target
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")

    def cells(self) -> list[str]:
        ok = "-" if self.ok is None else ("yes" if self.ok else "NO")
        return [self.name, f"{_number(self.measured)} {self.unit}",
                f"{_number(self.baseline)} {self.unit}", _number(self.ratio, 2), self.target, ok]

    def as_dict(self) -> dict:
        values = {**asdict(self), "ratio": self.ratio}
        return {k: None if isinstance(v, float) and v != v else v for k, v in values.items()}


def failed_row(name: str, error: str) -> Row:
    """A row for a measurement that raised: no figures, not ok."""
    return Row(name, float("nan"), float("nan"), "", "-", False, f"FAILED: {error}")


def _number(value: float, decimals: int | None = None) -> str:
    if value != value:  # NaN
        return "n/a"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def format_table(rows: list[Row]) -> str:
    """A plain-text (Markdown-compatible) table, then the rows' notes, numbered."""
    cells = [list(COLUMNS), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    lines = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(values) for values in cells[1:]]
    notes = [f"- {row.name}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def write_json(path: str | Path, rows: list[Row], meta: dict) -> None:
    """The rows and the run's metadata (machine, mode, durations) as JSON."""
    payload = {**meta, "rows": [row.as_dict() for row in rows]}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
