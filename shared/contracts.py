"""The values every trigger and the core exchange: where rows go, and what became of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import PushError, RowProblem, TransientError

#: How many row problems a PushResult lists; the rest are counted (and dead-lettered).
MAX_LISTED_PROBLEMS = 100


@dataclass(frozen=True)
class Target:
    """Where rows go: a dataset (name or id) and a table, in a workspace (name or id) or, when
    ``workspace`` is None, in My workspace."""

    dataset: str
    table: str
    workspace: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"workspace": self.workspace, "dataset": self.dataset, "table": self.table}


@dataclass
class PushResult:
    """What happened to the rows of one :func:`shared.engine.ingest.Ingestor.push` call.

    Every row received is accounted for: ``sent + rejected + unsent == received``. Rejected
    rows were refused for good (by validation, or by Power BI with a 4xx, or because the target
    cannot be used) and are ``dead_lettered`` when a store is configured; ``unsent`` rows were
    not delivered because delivery stopped on a transient failure (see ``stopped``).
    """

    target: Target
    dataset_id: str | None = None
    #: The workspace (group) id the target resolved to; None for My workspace.
    workspace_id: str | None = None
    received: int = 0
    sent: int = 0
    rejected: int = 0  # refused by validation (before sending) or by Power BI with a 4xx
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    throttle_wait: float = 0.0
    #: Rows of a batch whose Add Rows failed ambiguously: they may already be stored.
    unconfirmed: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    dead_letter_location: str | None = None
    #: Why delivery stopped before the end (a transient failure), or None when it finished.
    stopped: str | None = None
    #: The permanent failure that made every remaining row undeliverable (a dataset that does
    #: not exist and has no definition, a refused identity), if there was one.
    failure: PushError | None = None
    #: The transient error that stopped delivery, when ``stopped`` is set by one.
    cause: TransientError | None = None
    #: Each destination's own result when the table's rows go to more than Power BI alone
    #: (``datasets/<Dataset>.destinations.json``, issue 18), by destination name; empty
    #: otherwise. The fields above are then the first destination's: Power BI's when it is one
    #: (so HTTP answers and the Power BI surface mean what they always meant), else the
    #: Eventhouse's. A row counts as delivered per destination: each one's ``sent``,
    #: ``rejected``, ``unsent`` and ``stopped`` are its own.
    destinations: dict[str, PushResult] = field(default_factory=dict)
    #: For a destination that stopped: every row of this caller's before this index was
    #: acknowledged or dead-lettered by it, so a re-send for it alone may start there (what
    #: it acknowledged is not sent to it twice). 0 when not known.
    resume_from: int = 0

    @property
    def unsent(self) -> int:
        return self.received - self.sent - self.rejected

    def note_problem(self, problem: RowProblem) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(problem)

    @property
    def incomplete(self) -> PushResult | None:
        """The first destination whose delivery stopped on a transient failure (this result
        itself when there is one destination), or None when none did."""
        for result in self.destinations.values() or (self,):
            if result.stopped is not None and result.cause is not None:
                return result
        return None

    @property
    def partly_failed(self) -> list[str]:
        """The destinations that refused these rows for good (their rows dead-lettered, naming
        them) while another one stored some; empty otherwise. An answer is then not the
        failure's: a sender that retries would add the stored rows a second time."""
        failed = [name for name, each in self.destinations.items() if each.failure is not None]
        stored = any(each.sent for name, each in self.destinations.items() if name not in failed)
        return failed if failed and stored else []

    def to_json(self) -> dict[str, Any]:
        """A summary for HTTP answers and the one structured log line per invocation; with
        several destinations, ``destinations`` holds each one's summary (without ``target``)."""
        summary = self._summary()
        if self.destinations:
            summary["destinations"] = {
                name: {k: v for k, v in result._summary().items() if k != "target"}
                for name, result in self.destinations.items()
            }
        return summary

    def _summary(self) -> dict[str, Any]:
        return {
            "target": self.target.to_json(),
            "datasetId": self.dataset_id,
            "workspaceId": self.workspace_id,
            "received": self.received,
            "sent": self.sent,
            "rejected": self.rejected,
            "deadLettered": self.dead_lettered,
            "unsent": self.unsent,
            "unconfirmed": self.unconfirmed,
            "batches": self.batches,
            "retries": self.retries,
            "throttleWaitSeconds": round(self.throttle_wait, 3),
            "problems": [p.to_json() for p in self.problems],
            "problemsListed": len(self.problems),
            "deadLetterLocation": self.dead_letter_location,
            "stopped": self.stopped,
            "error": (
                {"code": type(self.failure).__name__, "message": self.failure.message}
                if self.failure
                else None
            ),
        }


@dataclass(frozen=True)
class Unreadable:
    """A piece of a source (a file's line, say) that is not a row: where it is, why, and its
    text (shortened)."""

    reason: str
    text: str = ""
    line: int | None = None
    #: True when nothing after it can be read (the stream itself failed).
    final: bool = False
