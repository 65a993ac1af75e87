"""Fault injection: throttling storms, server errors, latency, dropped and lost responses.

Faults apply to POST rows requests (the hot path) unless ``all_operations`` is set. A scripted
sequence (``script``) is consumed first, one entry per request, so tests can be exact; after it,
each fault fires at its rate, drawn from a seeded random generator.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

#: The kinds a fault can take, in the order their rates are tried.
KINDS = ("throttle", "error_500", "error_503", "drop", "accept_then_fail")
SCRIPT_ENTRIES = (*KINDS, "ok")


class FaultConfigError(ValueError):
    """A fault setting that makes no sense; the message names it."""


@dataclass
class FaultPlan:
    """What to inject. Rates are probabilities in [0, 1] per request."""

    throttle: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    drop: float = 0.0
    accept_then_fail: float = 0.0
    latency_ms: float = 0.0
    latency_rate: float = 0.0
    #: Seconds in the Retry-After of an injected 429 or 503.
    retry_after: int = 1
    all_operations: bool = False
    seed: int | None = None
    script: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in (*KINDS, "latency_rate"):
            rate = getattr(self, name)
            if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                raise FaultConfigError(f"fault rate {name!r} must be a number from 0 to 1")
        if sum(getattr(self, name) for name in KINDS) > 1.0 + 1e-9:
            raise FaultConfigError("the fault rates add up to more than 1")
        if not isinstance(self.latency_ms, int | float) or self.latency_ms < 0:
            raise FaultConfigError("latency_ms must be a number of milliseconds, 0 or more")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise FaultConfigError("retry_after must be whole seconds, 0 or more")
        for entry in self.script:
            if entry not in SCRIPT_ENTRIES:
                raise FaultConfigError(
                    f"unknown script entry {entry!r}; use one of {', '.join(SCRIPT_ENTRIES)}"
                )
        self._random = random.Random(self.seed)

    @classmethod
    def from_json(cls, body: Any) -> FaultPlan:
        """Build a plan from the admin API's JSON object, refusing unknown keys."""
        if not isinstance(body, dict):
            raise FaultConfigError("the fault plan must be a JSON object")
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = set(body) - known
        if unknown:
            raise FaultConfigError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        script = body.get("script", [])
        if not isinstance(script, list):
            raise FaultConfigError("script must be a list")
        try:
            return cls(**{**body, "script": list(script)})
        except TypeError as exc:
            raise FaultConfigError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        """The plan as the admin API shows it."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def applies_to(self, operation: str) -> bool:
        """Whether this plan covers ``operation`` (an operationId-like name)."""
        return self.all_operations or operation == "PostRows"

    def draw(self) -> str | None:
        """The fault for the next request, or None for a normal answer."""
        if self.script:
            entry = self.script.pop(0)
            return None if entry == "ok" else entry
        roll = self._random.random()
        for kind in KINDS:
            rate = float(getattr(self, kind))
            if roll < rate:
                return kind
            roll -= rate
        return None

    def draw_latency(self) -> float:
        """Seconds of added latency for the next request (0 for none)."""
        if self.latency_ms and self._random.random() < self.latency_rate:
            return self.latency_ms / 1000.0
        return 0.0
