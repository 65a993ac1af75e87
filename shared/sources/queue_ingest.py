"""Queue messages to Power BI: decode, fetch a claim check, coalesce, and decide the outcome.

The queue trigger is a thin adapter over :meth:`QueueIngest.handle`, which follows the bundle's
delivery rule: it returns (the host completes the message) when the rows were delivered or
dead-lettered with a reason, and raises :class:`~shared.errors.TransientError` when they were
not, so the host redelivers the message and, after ``maxDequeueCount`` tries, moves it to
``<queue>-poison``. A malformed message is dead-lettered on its first delivery: retrying cannot
fix it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.contracts import PushResult, Target
from shared.engine.coalesce import Coalescer
from shared.engine.profile import ProfileError, TableProfile
from shared.engine.retry import Deadline
from shared.errors import NotFoundError, PermanentError, TransientError, ValidationError
from shared.sources.claimcheck import ClaimCheckStore
from shared.sources.envelope import envelope, rows_of
from shared.sources.messages import MessageError, decode
from shared.stores.deadletter import DeadLetter, DeadLetterStore

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

    from shared.sources.blob_ingest import BlobIngest

log = logging.getLogger(__name__)

#: Azure container names: 3-63 lower-case letters, digits and single hyphens.
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")

#: Where a message that names no readable target is dead-lettered.
UNREADABLE = Target("_unreadable", "_messages")


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
    ) -> None:
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
        raises TransientError when the message must be redelivered."""
        source = f"queue message {message_id} (try {dequeue_count})"
        loop = asyncio.get_running_loop()
        try:
            decoded = decode(body)
            if isinstance(decoded, dict) and "continueBlob" in decoded:
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
        assert rows is not None
        try:
            result = await self._coalescer().push(
                item.target,
                rows,
                source=source,
                deadline=Deadline.after(self.time_budget, self._clock),
                profile=profile,
            )
        except TransientError as error:
            # Say which try this was: after maxDequeueCount tries the host moves the message to
            # <queue>-poison, and an operator reading the log should see it coming.
            log.warning(
                "%s: not delivered yet (redelivered later, or poisoned after the last try): %s",
                source,
                error,
            )
            raise
        log.info("%s: %s", source, _summary(result))
        if item.blob is not None:
            try:
                await loop.run_in_executor(None, self._claim_checks().delete, item.blob)
            except TransientError as error:
                # The rows are safe; failing now would redeliver (and duplicate) them.
                log.warning("%s: claim check left behind: %s", source, error)
        return result

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


def _summary(result: PushResult) -> dict[str, Any]:
    keys = ("received", "sent", "rejected", "deadLettered", "batches", "retries")
    summary = result.to_json()
    return {k: summary[k] for k in keys}
