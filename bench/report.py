"""One measured figure, its target, whether it is met, and how the table is printed."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import REPO


@dataclass
class Figure:
    """One line of the table; ``details`` holds the raw numbers for the JSON file."""

    id: str
    name: str
    measured: str
    target: str
    met: bool | None  # None: no target (informative)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def table(figures: Sequence[Figure]) -> str:
    """The figures as a fixed-width text table."""
    head = ("#", "figure", "measured", "target", "met?")
    rows = [(f.id, f.name, f.measured, f.target, verdict(f.met)) for f in figures]
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)).rstrip(), line]
    out += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(out)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def profile(call: Callable[[], object], path: Path, top: int = 15) -> list[dict[str, Any]]:
    """Run ``call`` under cProfile, write the full listing (by own time) to ``path`` and return
    the ``top`` functions by own time, with their share of the total."""
    profiler = cProfile.Profile()
    profiler.runcall(call)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(25)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue(), encoding="utf-8")
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    ranked = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    summary = []
    for (filename, line, function), (_, calls, own, cumulative, _) in ranked:
        where = _short(filename)
        summary.append(
            {
                "function": f"{where}:{line}({function})",
                "calls": calls,
                "own_s": round(own, 3),
                "own_share": round(own / total, 3),
                "cumulative_s": round(cumulative, 3),
            }
        )
    return summary


def _short(filename: str) -> str:
    """A profiled function's file, relative to the repository, site-packages or the stdlib."""
    if filename.startswith(str(REPO) + "/"):
        return filename[len(str(REPO)) + 1 :]
    if "/site-packages/" in filename:
        return filename.split("/site-packages/")[-1]
    parts = Path(filename).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else filename


def summarise_profile(summary: Sequence[dict[str, Any]], top: int = 10) -> str:
    lines = []
    for entry in summary[:top]:
        lines.append(
            f"  {entry['own_share']:6.1%}  {entry['own_s']:7.3f} s  {entry['calls']:>9,}  "
            f"{entry['function']}"
        )
    return "\n".join(lines)
