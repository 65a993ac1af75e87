"""The emulator's quota clock: real time, optionally sped up, and advanceable by tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ScaledClock:
    """Monotonic seconds that run ``scale`` times faster than real time.

    Quota windows (a minute, an hour) are measured on this clock, so ``scale=60`` makes an
    emulated hour last one real minute. :meth:`advance` jumps forward, so tests can cross a
    window without sleeping. Token lifetimes do not use this clock: they are wall-clock facts.
    """

    def __init__(self, scale: float = 1.0, base: Callable[[], float] = time.monotonic) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self._base = base
        self._origin = base()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Emulated seconds since the clock was made (plus any advance)."""
        with self._lock:
            return (self._base() - self._origin) * self.scale + self._offset

    def advance(self, seconds: float) -> None:
        """Jump the clock forward by ``seconds`` emulated seconds."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds

    def to_real_seconds(self, emulated: float) -> float:
        """How long ``emulated`` seconds take in real time."""
        return emulated / self.scale
