"""Figure 5: cold start, as the import time of ``function_app`` (``python -X importtime``),
split into the bundle's own modules (``function_app``, ``functions.*``, ``shared.*``), the
third-party libraries and the standard library. Self times are summed, so the three parts add
up to the whole import. One run first to write the bytecode caches, then the median of several.

Measured as deployed: the packages that only ``requirements-dev.txt`` brings into the venv
(those not required, directly or transitively, by ``requirements.txt``) are made unimportable
in the child, as they are on the Functions host. It matters: with aiohttp installed (the
emulator's server), azure-core imports its aiohttp transport when azure-storage-blob loads,
about 100 ms that a deployed app does not spend. The dev-venv import is reported beside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from importlib import metadata
from typing import Any

from bench.machine import REPO
from bench.report import Figure, median

OWN = ("function_app", "functions", "shared")
EMPTY: list[str] = []
TARGET_OWN_MS = 50.0
_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def _name(requirement: str) -> str | None:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def runtime_distributions() -> set[str]:
    """Distributions ``requirements.txt`` installs: its names and what they require."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    todo = [n for line in lines if not line.lstrip().startswith(("#", "-")) if (n := _name(line))]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [n for r in requires if "extra ==" not in r if (n := _name(r))]
    return seen


def dev_only_modules() -> list[str]:
    """Top-level modules in the venv that no runtime distribution provides."""
    runtime = runtime_distributions()
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if module.isidentifier() and not any(_name(d) in runtime for d in dists)
    )


def import_times(blocked: list[str] = EMPTY) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, depth) for every module ``import function_app`` loads,
    with the ``blocked`` top-level modules unimportable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    code = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); import function_app"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"import function_app failed:\n{done.stderr[-3000:]}")
    out = []
    for line in done.stderr.splitlines():
        match = _LINE.match(line)
        if match:
            own, cumulative, indent, module = match.groups()
            out.append((module, int(own), int(cumulative), (len(indent) - 1) // 2))
    return out


def split(times: list[tuple[str, int, int, int]]) -> dict[str, float]:
    """Milliseconds of own modules, third-party libraries and the standard library."""
    parts: dict[str, float] = defaultdict(float)
    for module, own, _, _ in times:
        top = module.split(".")[0]
        if top in OWN:
            parts["own"] += own / 1000
        elif top in sys.stdlib_module_names or top.startswith("_"):
            parts["stdlib"] += own / 1000
        else:
            parts["libraries"] += own / 1000
    parts["total"] = parts["own"] + parts["libraries"] + parts["stdlib"]
    return dict(parts)


def heaviest(times: list[tuple[str, int, int, int]], top: int = 8) -> list[dict[str, Any]]:
    """Third-party packages by the self time of all their modules."""
    packages: dict[str, int] = defaultdict(int)
    for module, own, _, _ in times:
        name = module.split(".")[0]
        if name not in OWN and name not in sys.stdlib_module_names and not name.startswith("_"):
            key = ".".join(module.split(".")[:3]) if name == "azure" else name
            packages[key] += own
    ranked = sorted(packages.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"package": name, "ms": round(us / 1000, 1)} for name, us in ranked]


def own_modules(times: list[tuple[str, int, int, int]], top: int = 8) -> list[dict[str, Any]]:
    mine = [(m, own) for m, own, _, _ in times if m.split(".")[0] in OWN]
    mine.sort(key=lambda item: item[1], reverse=True)
    return [{"module": m, "ms": round(us / 1000, 2)} for m, us in mine[:top]]


def _medians(runs: list[list[tuple[str, int, int, int]]]) -> dict[str, float]:
    splits = [split(times) for times in runs]
    return {
        key: median([s[key] for s in splits]) for key in ("own", "libraries", "stdlib", "total")
    }


def run(repetitions: int) -> list[Figure]:
    blocked = dev_only_modules()
    import_times(blocked)  # bytecode caches
    deployed_runs = [import_times(blocked) for _ in range(repetitions)]
    dev_runs = [import_times() for _ in range(repetitions)]
    deployed, dev = _medians(deployed_runs), _medians(dev_runs)
    last = deployed_runs[-1]
    details = {
        "repetitions": repetitions,
        "own_ms": round(deployed["own"], 1),
        "libraries_ms": round(deployed["libraries"], 1),
        "stdlib_ms": round(deployed["stdlib"], 1),
        "total_ms": round(deployed["total"], 1),
        "modules_loaded": len(last),
        "heaviest_libraries": heaviest(last),
        "heaviest_own_modules": own_modules(last),
        "dev_venv": {key: round(value, 1) for key, value in dev.items()}
        | {"modules_loaded": len(dev_runs[-1]), "heaviest_libraries": heaviest(dev_runs[-1])},
        "blocked_dev_only_modules": blocked,
    }
    return [
        Figure(
            "5a",
            "Cold start: import function_app, own modules",
            f"{deployed['own']:.1f} ms",
            f"< {TARGET_OWN_MS:.0f} ms",
            deployed["own"] < TARGET_OWN_MS,
            details,
        ),
        Figure(
            "5b",
            "Cold start: libraries + stdlib, whole import (as deployed)",
            f"{deployed['libraries']:.0f} + {deployed['stdlib']:.0f} ms; total "
            f"{deployed['total']:.0f} ms (dev venv {dev['total']:.0f})",
            "(informative)",
            None,
            {
                k: details[k]
                for k in ("libraries_ms", "stdlib_ms", "total_ms", "heaviest_libraries", "dev_venv")
            },
        ),
    ]
