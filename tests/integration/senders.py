"""A synchronous Add Rows sender as a well-behaved client writes it, for multi-process tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import requests


class SyncSenders:
    """Sends rows and retries after ``Retry-After`` until it gets a 200; counts every answer's
    status over all the threads that use it (a test asserts no 5xx among them)."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()

    def send(self, url: str, body: dict[str, Any], seconds: float = 150.0) -> None:
        """POST ``body`` to ``url`` until a 200, or until ``seconds`` have passed."""
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answer = session.post(url, json=body, timeout=60)
            with self._lock:
                self.statuses[answer.status_code] += 1
            if answer.status_code == 200:
                return
            time.sleep(min(5.0, float(answer.headers.get("Retry-After", "1"))))
