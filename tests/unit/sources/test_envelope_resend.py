"""Envelopes restricted to some destinations (issue 18): ``resent`` parsed and written, the
re-send that finishes a delivery one destination stopped, and claim checks that keep both."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.contracts import PushResult, Target
from shared.errors import TransientError
from shared.sources.claimcheck import MAX_INLINE_MESSAGE_BYTES, ClaimCheckStore, queue_messages
from shared.sources.envelope import BodyError, Envelope, envelope, resend_for_stopped
from shared.sources.messages import decode

TARGET = Target("Sales", "Product")


def test_resent_round_trips_and_needs_destinations() -> None:
    body = {"dataset": "Sales", "table": "Product", "rows": [], "destinations": ["eventhouse"]}
    assert envelope(body).resent is False
    item = envelope({**body, "resent": True})
    assert item.resent and item.destinations == ("eventhouse",)
    assert envelope(item.to_json()) == item
    assert "resent" not in envelope(body).to_json()
    with pytest.raises(BodyError) as refused:
        envelope({"dataset": "Sales", "table": "Product", "rows": [], "resent": True})
    assert refused.value.field == "body.resent"
    with pytest.raises(BodyError):
        envelope({**body, "resent": "yes"})


def stopped_at(position: int) -> PushResult:
    """Power BI delivered every row; the Eventhouse stopped, ``position`` rows in."""
    top = PushResult(TARGET, received=10, sent=10)
    eventhouse = PushResult(TARGET, received=10, sent=position, stopped="down")
    eventhouse.cause = TransientError("down")
    eventhouse.resume_from = position
    top.destinations = {"powerbi": top, "eventhouse": eventhouse}
    return top


def test_the_re_send_starts_where_the_stopped_destination_stopped() -> None:
    rows = [{"ProductID": i} for i in range(10)]
    rest = resend_for_stopped(Envelope(TARGET, rows=rows, profile={"x": 1}), rows, stopped_at(4))
    assert rest == Envelope(
        TARGET, rows=rows[4:], profile={"x": 1}, destinations=("eventhouse",), resent=True
    )


def test_no_re_send_with_one_destination_or_when_every_one_stopped() -> None:
    rows = [{"ProductID": i} for i in range(10)]
    item = Envelope(TARGET, rows=rows)
    alone = PushResult(TARGET, received=10, sent=3, stopped="down")
    assert resend_for_stopped(item, rows, alone) is None
    assert resend_for_stopped(item, rows, PushResult(TARGET, received=10, sent=10)) is None
    everything = stopped_at(4)
    everything.destinations["powerbi"] = PushResult(TARGET, received=10, stopped="down too")
    assert resend_for_stopped(item, rows, everything) is None


class Parked(ClaimCheckStore):
    """Claim checks kept in memory: :func:`queue_messages` only calls ``put``."""

    def __init__(self) -> None:
        self.payloads: dict[str, bytes] = {}

    def put(self, payload: bytes) -> str:
        reference = f"claims/{len(self.payloads)}"
        self.payloads[reference] = payload
        return reference


def test_a_big_re_send_goes_by_claim_check_with_its_restriction() -> None:
    rows: list[Any] = [{"Name": "x" * 100, "ProductID": i} for i in range(1_000)]
    assert len(json.dumps(rows)) > MAX_INLINE_MESSAGE_BYTES
    item = Envelope(TARGET, rows=rows, destinations=("eventhouse",), resent=True)
    parked = Parked()
    (message,) = queue_messages([item], lambda: parked)
    on_queue = envelope(decode(message.encode()), "message")
    assert on_queue.destinations == ("eventhouse",) and on_queue.resent
    assert on_queue.blob == "claims/0"
    assert envelope(decode(parked.payloads["claims/0"]), "claim") == item
    (plain,) = queue_messages([Envelope(TARGET, rows=rows[:2])], lambda: parked, encoded=False)
    assert json.loads(plain)["rows"] == rows[:2]
