"""Queue messages to Power BI: decode, fetch a claim check, coalesce, and decide the outcome.

The queue trigger is a thin adapter over :meth:`QueueIngest.handle`, which follows the bundle's
delivery rule: it returns (the host completes the message) when the rows were delivered or
dead-lettered with a reason, and raises :class:`~shared.errors.TransientError` when they were
not, so the host redelivers the message and, after ``maxDequeueCount`` tries, moves it to
``<queue>-poison``. A malformed message is dead-lettered on its first delivery: retrying cannot
fix it.

Long pauses: the message is handed back
--------------------------------------
Power BI sometimes asks for a pause far longer than an invocation (the hourly row quota, or a
table of 250,000 rows or more, allowed 120 POSTs an hour, answer 429 with e.g.
``Retry-After: 3540``). A redelivery comes back after the host's ``visibilityTimeout`` (30 s in
host.json), long before the pause is over, and is spent for nothing: in the same process the
governor still holds the pause and fails it at once, elsewhere Power BI refuses it again. Five
such tries took a message to ``<queue>-poison`` within minutes (measured: 5 of 5 messages
poisoned in 196 s at real quota time), although nothing was wrong with it. So when delivery stops
on a :class:`~shared.errors.TransientError` whose ``retry_after`` is longer than the host's
redelivery delay, and nothing of the message can be in Power BI, :meth:`QueueIngest.handle`
*hands the message back*: it sends the same body to the rows queue again, invisible for the
pause (rounded up, at most 7 days, the queue's maximum), and returns, so that the host completes
the original. Its dequeue count is not spent; the new message starts at 1. See
:meth:`QueueIngest.handle` for the rule and its limits.

Several destinations: the message is re-sent for the ones that failed
----------------------------------------------------------------------
A table routed to Power BI and an Eventhouse (``datasets/<Dataset>.destinations.json``) is
delivered to each on its own. When one of them stops on a transient failure after the other
delivered (or dead-lettered) every row, redelivering the message whole would add its rows to
the one that has them a second time. So the message is re-sent restricted to the destinations
that stopped (the envelope's ``"destinations"``, with ``"resent": true`` so that rows refused
by validation are not dead-lettered twice), from the first row they did not acknowledge,
invisible for the host's redelivery delay or the pause the failed destination asked for,
whichever is longer, and the original is completed. The re-sent message has one destination
fewer, so it is never re-sent this way again: if it keeps failing it is redelivered and
poisoned like any message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.contracts import PushResult, Target
from shared.engine.coalesce import Coalescer
from shared.engine.governor import SlotRefused
from shared.engine.ingest import PushIncomplete
from shared.engine.profile import ProfileError, TableProfile
from shared.engine.retry import REFUSED_STATUSES, Deadline
from shared.errors import NotFoundError, PermanentError, TransientError, ValidationError
from shared.sources.claimcheck import ClaimCheckStore, queue_messages
from shared.sources.envelope import Envelope, envelope, resend_for_stopped, rows_of
from shared.sources.messages import MessageError, decode, encode
from shared.stores.deadletter import DeadLetter, DeadLetterStore

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

    from shared.sources.blob_ingest import BlobIngest

log = logging.getLogger(__name__)

#: Azure container names: 3-63 lower-case letters, digits and single hyphens.
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")

#: Where a message that names no readable target is dead-lettered.
UNREADABLE = Target("_unreadable", "_messages")

#: The longest a queue message can be kept invisible: 7 days (Put Message, ``visibilitytimeout``:
#: https://learn.microsoft.com/rest/api/storageservices/put-message).
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600

#: The app setting that overrides host.json's ``extensions.queues.visibilityTimeout``
#: (functions-host-json, "Override host.json values"); the host reads it case-insensitively.
VISIBILITY_SETTING = "AzureFunctionsJobHost__extensions__queues__visibilityTimeout"

_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)")


def redelivery_delay(env: Mapping[str, str], host_json: Path) -> float:
    """Seconds after which the host makes a failed message visible again: the
    ``extensions.queues.visibilityTimeout`` app-setting override, else host.json's, else the
    host's default, 0 (functions-bindings-storage-queue#host-json). A value this cannot read
    counts as 0 (with a warning): the hand-back rule then errs towards handing back, which
    never makes a message visible before the pause is over."""
    text = next((v for k, v in env.items() if k.lower() == VISIBILITY_SETTING.lower()), None)
    where = VISIBILITY_SETTING
    if text is None:
        where = f"{host_json} extensions.queues.visibilityTimeout"
        try:
            document = json.loads(host_json.read_text(encoding="utf-8-sig"))
            value = document.get("extensions", {}).get("queues", {}).get("visibilityTimeout")
        except (OSError, ValueError, AttributeError):
            value = None
        if value is None:
            return 0.0
        text = str(value)
    match = _TIMESPAN.fullmatch(text.strip())
    if match is None:
        log.warning("%s: %r is not a TimeSpan like 00:00:30; taken as 0", where, text[:40])
        return 0.0
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86_400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class QueueIngest:
    """Handles one rows-queue message per call; shared by every invocation of the process."""

    def __init__(
        self,
        coalescer: Callable[[], Coalescer],
        claim_checks: Callable[[], ClaimCheckStore],
        dead_letters: Callable[[], DeadLetterStore],
        *,
        time_budget: float = 240.0,
        clock: Callable[[], float] = time.monotonic,
        blobs: Callable[[], BlobIngest] | None = None,
        blob_service: Callable[[], BlobServiceClient] | None = None,
        rows_queue: Callable[[], QueueClient] | None = None,
        redelivery_delay: float = 0.0,
    ) -> None:
        """``rows_queue`` is the queue this handler's messages come from (messages written as
        they are, no encoding policy): long pauses hand messages back to it; without it every
        transient failure is raised. ``redelivery_delay`` is the host's ``visibilityTimeout``
        for a failed message (:func:`redelivery_delay`)."""
        self._rows_queue = rows_queue
        self.redelivery_delay = redelivery_delay
        self._blobs = blobs
        self._blob_service = blob_service
        self._coalescer = coalescer
        self._claim_checks = claim_checks
        self._dead_letters = dead_letters
        self.time_budget = time_budget
        self._clock = clock

    async def handle(
        self, body: bytes, message_id: str, dequeue_count: int = 1
    ) -> PushResult | None:
        """Deliver one message's rows. Returns the result (None for a dead-lettered message);
        raises TransientError when the message must be redelivered.

        A message whose delivery must wait longer than a redelivery would (see
        :meth:`_hand_back`) is handed back instead: the same body is sent to the rows queue
        again, invisible until the pause is over, and this returns (the stopped result, or
        None when the pause came before the push), so that the host completes the original
        without spending its dequeue count. Only a message of which nothing can be in Power BI
        is handed back: before the push (a claim check or a lookup refused), or a push that
        stopped with none of its rows sent or unconfirmed. A partly delivered message (some
        rows acknowledged, or a batch whose answer was lost) is raised as before. Sending it
        again re-sends the rows already stored. A redelivery does that too, but at most
        ``maxDequeueCount`` times. Hand-backs are not counted, so a message handed back after
        every partial delivery could store its first part again without end.
        """
        source = f"queue message {message_id} (try {dequeue_count})"
        loop = asyncio.get_running_loop()
        continuing = False
        try:
            decoded = decode(body)
            if isinstance(decoded, dict) and "continueBlob" in decoded:
                continuing = True
                return await self._continue_blob(decoded["continueBlob"], source)
            item = envelope(decoded, "message")
            rows = item.rows
            if item.blob is not None:
                payload = await loop.run_in_executor(None, self._claim_checks().get, item.blob)
                rows = rows_of(decode(payload), "claim check")
            profile = await loop.run_in_executor(None, self._profile, item.target, item.profile)
        except (ValidationError, NotFoundError) as error:  # a ProfileError too
            await loop.run_in_executor(None, self._dead_letter_message, body, error.message, source)
            return None
        except TransientError as error:
            # Nothing of this message was sent yet: a long pause asked for by a lookup (the
            # profile's columns) is waited out in the queue like one asked for by Add Rows. A
            # continuation is not handed back here: the blob path hands its own long pauses on
            # from the blob's checkpoint (BlobIngest), and what it raises is for the host.
            if not continuing and await self._hand_back(body, source, error):
                return None
            _not_yet(source, error)
            raise
        assert rows is not None
        try:
            result = await self._coalescer().push(
                item.target,
                rows,
                source=source,
                deadline=Deadline.after(self.time_budget, self._clock),
                profile=profile,
                destinations=item.destinations,
                refused_kept=item.resent,
            )
        except PushIncomplete as stopped:
            if await self._resend_failed(body, item, rows, source, stopped):
                return stopped.result
            untouched = stopped.result.sent == 0 and stopped.result.unconfirmed == 0
            if untouched and await self._hand_back(body, source, stopped):
                # The claim check (if any) stays: it is deleted once its rows are delivered.
                return stopped.result
            _not_yet(source, stopped)
            raise
        except TransientError as error:  # no result: what was sent is not known
            _not_yet(source, error)
            raise
        log.info("%s: %s", source, _summary(result))
        if item.blob is not None:
            try:
                await loop.run_in_executor(None, self._claim_checks().delete, item.blob)
            except TransientError as error:
                # The rows are safe; failing now would redeliver (and duplicate) them.
                log.warning("%s: claim check left behind: %s", source, error)
        return result

    async def _hand_back(self, body: bytes, source: str, error: TransientError) -> bool:
        """Send ``body`` to the rows queue again, invisible for the pause ``error`` asks for;
        True once it is there, False when this message is not to be handed back (the caller
        raises ``error``: the host redelivers).

        The rule: Power BI asked for a pause (``retry_after`` on a 429 or 503, or the
        governor's refusal of a slot for Power BI's pause or quotas) longer than the host's
        redelivery delay (``visibilityTimeout``), so a redelivery would come back before the
        pause is over and spend a try for nothing. What is left of the time budget is not
        part of the rule: the retry layer and the governor raise a ``retry_after`` only when
        it could not be waited out in this invocation (longer than
        ``POWERBI_MAX_RETRY_AFTER_SECONDS``, or ending past the deadline), and this handler
        does not push again, so the only choice left is between a redelivery after
        ``visibilityTimeout`` and a hand-back after the pause. A pause no longer than the
        redelivery delay is served by a plain redelivery, which is raised as before.

        The new message carries the same body: a claim check is handed back as it is (its
        blob is deleted only after delivery). It lives 7 days once visible, as a fresh
        message would (the original's expiry is not known here), and gets a new id and a
        fresh dequeue count: a message that meets long pauses again and again is handed back
        each time and never reaches ``<queue>-poison`` (a pause is not the message's fault).
        Rows that this try refused for good were dead-lettered already and are dead-lettered
        again by the next try (with that try's source), as on any redelivery.

        If the new message cannot be sent (storage trouble), False: the original is
        redelivered by the host, never completed with its rows unsafe.
        """
        pause = error.retry_after
        if self._rows_queue is None or pause is None or pause <= self.redelivery_delay:
            return False
        cause = error.result.cause if isinstance(error, PushIncomplete) else error
        if not (
            isinstance(cause, SlotRefused)
            or (cause is not None and cause.status in REFUSED_STATUSES)
        ):
            # A wait nobody asked for as a pause (an identity endpoint's 2 s back-off while it
            # is down, say) is a failure: redelivered, and poisoned after the last try.
            return False
        delay = min(MAX_VISIBILITY_SECONDS, max(1, math.ceil(pause)))
        rows_queue = self._rows_queue

        def send() -> Any:
            return rows_queue().send_message(
                body.decode("utf-8"),  # decode() read it as UTF-8 already
                visibility_timeout=delay,
                time_to_live=delay + MAX_VISIBILITY_SECONDS,
            )

        try:
            sent = await asyncio.get_running_loop().run_in_executor(None, send)
        except Exception as failure:  # whatever failed, the original must not be completed
            # The type and status only: a storage error's text can carry a request URL.
            log.warning(
                "%s: could not hand the message back for a %.0f s pause (%s %s); it is "
                "redelivered instead",
                source,
                pause,
                type(failure).__name__,
                getattr(failure, "status_code", ""),
            )
            return False
        visible = getattr(sent, "next_visible_on", None) or datetime.now(UTC) + timedelta(
            seconds=delay
        )
        log.warning(
            "%s: handed back: Power BI asked to wait %.0f s (%s); sent again as message %s, "
            "visible again at %s; dequeue count not spent",
            source,
            pause,
            error,
            getattr(sent, "id", "?"),
            visible.isoformat(),
        )
        return True

    async def _resend_failed(
        self, body: bytes, item: Envelope, rows: list[Any], source: str, stopped: PushIncomplete
    ) -> bool:
        """Re-send the message for the destinations that stopped, when every other one
        delivered or dead-lettered all of its rows (see the module): only the rows from the
        first one a stopped destination did not acknowledge, marked ``resent`` (its refused
        rows are dead-lettered already). True once it is on the rows queue (the original may
        then be completed), False otherwise (the caller goes on as for one destination)."""
        rest = resend_for_stopped(item, rows, stopped.result)
        if self._rows_queue is None or rest is None:
            return False
        failed = list(rest.destinations or ())
        per = stopped.result.destinations
        causes = [per[name].cause for name in failed]
        pauses = [cause.retry_after or 0.0 for cause in causes if cause is not None]
        # No sooner than a redelivery would come (the host's delay), nor before the pause.
        delay = min(MAX_VISIBILITY_SECONDS, math.ceil(max([self.redelivery_delay, *pauses])))
        whole = item.blob is not None and len(rest.rows or []) == len(rows)
        # As the original came: plain JSON stays plain (base64 grows it by a third).
        encoded = not body.lstrip().startswith((b"{", b"["))
        claim_checks = self._claim_checks
        rows_queue = self._rows_queue

        def send() -> Any:
            if whole:  # the same claim check serves the re-send
                same = json.dumps(dataclasses.replace(rest, rows=None, blob=item.blob).to_json())
                text = encode(same) if encoded else same
            else:
                (text,) = queue_messages([rest], claim_checks, encoded=encoded)
            return rows_queue().send_message(
                text, visibility_timeout=delay, time_to_live=delay + MAX_VISIBILITY_SECONDS
            )

        loop = asyncio.get_running_loop()
        try:
            sent = await loop.run_in_executor(None, send)
        except Exception as failure:  # the original must then be redelivered, never completed
            log.warning(
                "%s: could not re-send the message for %s (%s %s); it is redelivered whole",
                source,
                ", ".join(failed),
                type(failure).__name__,
                getattr(failure, "status_code", ""),
            )
            return False
        log.warning(
            "%s: %s stopped (%s) after %s delivered; %d rows re-sent for %s only as message "
            "%s, visible in %d s",
            source,
            ", ".join(failed),
            stopped,
            ", ".join(name for name in per if name not in failed),
            len(rest.rows or []),
            ", ".join(failed),
            getattr(sent, "id", "?"),
            delay,
        )
        if item.blob is not None and not whole:
            try:
                await loop.run_in_executor(None, claim_checks().delete, item.blob)
            except TransientError as error:
                log.warning("%s: claim check left behind: %s", source, error)
        return True

    async def _continue_blob(self, spec: Any, source: str) -> PushResult | None:
        """The rest of a long file, handed on by the blob path: resume it from its checkpoint."""
        if (
            not isinstance(spec, dict)
            or not all(isinstance(spec.get(k), str) for k in ("container", "name"))
            or self._blobs is None
            or self._blob_service is None
        ):
            raise MessageError("continueBlob needs 'container' and 'name'")
        if not _CONTAINER_NAME.fullmatch(spec["container"]):
            raise MessageError(f"continueBlob: {spec['container'][:70]!r} is not a container name")
        try:
            blob = self._blob_service().get_blob_client(spec["container"], spec["name"])
        except ValueError as error:  # a container or blob name the SDK refuses
            raise MessageError(f"continueBlob names no usable blob: {error}") from None
        outcome = await asyncio.get_running_loop().run_in_executor(None, self._blobs().handle, blob)
        log.info("%s: continued %s: %s", source, outcome.source, outcome.status)
        return outcome.result

    def _profile(self, target: Target, override: dict[str, Any] | None) -> TableProfile | None:
        """The table's profile with the message's own applied; a :class:`ProfileError`
        dead-letters the message whole. A dataset that cannot be looked up now is the push's
        to report (transient failures are raised: the message is redelivered)."""
        try:
            return self._coalescer().ingestor.profile(target, override, "message.profile")
        except (ProfileError, TransientError):
            raise
        except PermanentError:
            return None

    def _dead_letter_message(self, body: bytes, reason: str, source: str) -> None:
        text = body.decode("utf-8", errors="replace")
        letter = DeadLetter(f"unreadable message: {reason}", text)
        location = self._dead_letters().write(UNREADABLE, [letter], source)
        log.warning("%s dead-lettered to %s: %s", source, location, reason)


def _not_yet(source: str, error: TransientError) -> None:
    # Say which try this was: after maxDequeueCount tries the host moves the message to
    # <queue>-poison, and an operator reading the log should see it coming.
    log.warning(
        "%s: not delivered yet (redelivered later, or poisoned after the last try): %s",
        source,
        error,
    )


def _summary(result: PushResult) -> dict[str, Any]:
    keys = ("received", "sent", "rejected", "deadLettered", "batches", "retries")
    summary = result.to_json()
    return {k: summary[k] for k in keys}
