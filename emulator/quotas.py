"""Per-dataset quota accounting: POSTs per minute/hour, rows per hour, pending requests.

Windows are rolling (a stricter reading than a fixed window: a client that stays under a rolling
window also stays under any fixed one). Only accepted POSTs count towards the windows.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from emulator import limits
from emulator.clock import ScaledClock


@dataclass(frozen=True)
class Throttle:
    """A 429 the service would send: which limit, and for how many emulated seconds."""

    reason: str
    retry_after: float
    message: str


@dataclass
class _Window:
    posts: deque[float] = field(default_factory=deque)
    rows: deque[tuple[float, int]] = field(default_factory=deque)
    rows_in_hour: int = 0
    pending: int = 0

    def expire(self, now: float) -> None:
        while self.posts and self.posts[0] <= now - limits.HOUR:
            self.posts.popleft()
        while self.rows and self.rows[0][0] <= now - limits.HOUR:
            self.rows_in_hour -= self.rows.popleft()[1]


class QuotaBook:
    """The quota state of every dataset, on one clock. Not thread-safe: the server is one loop."""

    def __init__(self, clock: ScaledClock) -> None:
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def _window(self, dataset_id: str) -> _Window:
        return self._windows.setdefault(dataset_id, _Window())

    def begin(self, dataset_id: str) -> Throttle | None:
        """Count a POST as pending, or say why it may not start (too many pending)."""
        window = self._window(dataset_id)
        if window.pending >= limits.MAX_PENDING_POSTS:
            return Throttle(
                "pending",
                1.0,
                f"Too many pending requests: at most {limits.MAX_PENDING_POSTS} POST rows "
                "requests may be in progress per dataset.",
            )
        window.pending += 1
        return None

    def end(self, dataset_id: str) -> None:
        """The pending POST finished (whatever its outcome)."""
        self._window(dataset_id).pending -= 1

    def check(self, dataset_id: str, rows: int, large_table: bool) -> Throttle | None:
        """Return the throttle that refuses ``rows`` more rows now, or None if they fit."""
        now = self.clock.now()
        window = self._window(dataset_id)
        window.expire(now)
        last_minute = [t for t in window.posts if t > now - limits.MINUTE]
        if len(last_minute) >= limits.MAX_POSTS_PER_MINUTE:
            return Throttle(
                "posts_per_minute",
                last_minute[-limits.MAX_POSTS_PER_MINUTE] + limits.MINUTE - now,
                f"Too many requests: at most {limits.MAX_POSTS_PER_MINUTE} POST rows requests "
                "per minute per dataset.",
            )
        if large_table and len(window.posts) >= limits.MAX_POSTS_PER_HOUR_LARGE_TABLE:
            return Throttle(
                "posts_per_hour_large_table",
                window.posts[-limits.MAX_POSTS_PER_HOUR_LARGE_TABLE] + limits.HOUR - now,
                f"Too many requests: a table holds {limits.LARGE_TABLE_ROWS:,} rows or more, so "
                f"at most {limits.MAX_POSTS_PER_HOUR_LARGE_TABLE} POST rows requests per hour "
                "are allowed for this dataset.",
            )
        if window.rows_in_hour + rows > limits.MAX_ROWS_PER_HOUR:
            # Wait until enough of the oldest rows leave the hour for these rows to fit.
            excess = window.rows_in_hour + rows - limits.MAX_ROWS_PER_HOUR
            freed, wait = 0, limits.HOUR
            for stamp, count in window.rows:
                freed += count
                if freed >= excess:
                    wait = stamp + limits.HOUR - now
                    break
            return Throttle(
                "rows_per_hour",
                wait,
                "You are over your rows per hour limit for this dataset. To push more rows per "
                "hour, upgrade your account to Power BI Pro or retry your push later.",
            )
        return None

    def record(self, dataset_id: str, rows: int) -> None:
        """Count an accepted POST of ``rows`` rows."""
        now = self.clock.now()
        window = self._window(dataset_id)
        window.posts.append(now)
        window.rows.append((now, rows))
        window.rows_in_hour += rows

    def usage(self, dataset_id: str) -> dict[str, int]:
        """Current use of each window, for the read API and the dashboard."""
        now = self.clock.now()
        window = self._window(dataset_id)
        window.expire(now)
        return {
            "postsLastMinute": sum(1 for t in window.posts if t > now - limits.MINUTE),
            "postsLastHour": len(window.posts),
            "rowsLastHour": window.rows_in_hour,
            "pending": window.pending,
        }

    def forget(self, dataset_id: str) -> None:
        """Drop a deleted dataset's windows."""
        self._windows.pop(dataset_id, None)


def retry_after_header(clock: ScaledClock, emulated_seconds: float) -> str:
    """Retry-After in whole real seconds (the service sends integers), never less than 1."""
    return str(max(1, math.ceil(clock.to_real_seconds(max(emulated_seconds, 0.0)))))
