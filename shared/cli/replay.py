"""Replay: re-drive what could not be delivered once its cause is fixed.

- Dead letters: each JSON-lines blob not yet marked ``replayed=true`` is read, its rows are
  pushed again to their targets (grouped by target and destination, in order: a letter that
  names its destination, ``powerbi`` or ``eventhouse``, goes to that one only, so the
  destination that had the row does not get it twice; one that names none, refused before
  delivery, goes to every destination of its table), and the blob is then marked
  (``replayed``, ``replayed_at``, ``replay_sent``, ``replay_rejected``), so running replay again
  does nothing to it. Rows refused again become new dead letters with the new reason: nothing
  is lost. Letters of unreadable messages name no target and are left for a person.
- Poison messages: each message of ``<queue>-poison`` goes through the same handler as the
  queue trigger and is deleted once it succeeds; one that fails transiently stays in the
  poison queue. A blob the blob trigger gave up on (reported on ``webjobs-blobtrigger-poison``)
  is resumed from its checkpoint the same way.
A transient failure stops the replay (and leaves what was not done unmarked) so it can be run
again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.contracts import PushResult, Target
from shared.engine.ingest import Ingestor
from shared.errors import TransientError, ValidationError
from shared.sources.messages import decode
from shared.sources.queue_ingest import UNREADABLE, QueueIngest

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    """What a replay did, for the command's output."""

    blobs_replayed: int = 0
    blobs_already_replayed: int = 0
    rows_sent: int = 0
    rows_rejected_again: int = 0
    messages_replayed: int = 0
    left_for_a_person: list[str] = field(default_factory=list)
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "blobsReplayed": self.blobs_replayed,
            "blobsAlreadyReplayed": self.blobs_already_replayed,
            "rowsSent": self.rows_sent,
            "rowsRejectedAgain": self.rows_rejected_again,
            "messagesReplayed": self.messages_replayed,
            "leftForAPerson": self.left_for_a_person,
            "stopped": self.stopped,
        }


def replay_dead_letters(
    container: ContainerClient, ingestor: Ingestor, prefix: str | None = None
) -> ReplayReport:
    """Push every not-yet-replayed dead letter under ``prefix`` again; mark each blob done."""
    report = ReplayReport()
    for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
        metadata = dict(blob.metadata or {})
        if metadata.get("replayed") == "true":
            report.blobs_already_replayed += 1
            continue
        text = container.download_blob(blob.name).readall().decode("utf-8")
        groups: dict[tuple[Target, str | None], list[Any]] = {}
        for line in text.split("\n"):  # not splitlines(): rows may hold U+2028 etc.
            if not line.strip():
                continue
            letter = json.loads(line)
            target = Target(**letter["target"])
            if target.dataset == UNREADABLE.dataset:
                report.left_for_a_person.append(blob.name)
                break
            groups.setdefault((target, letter.get("destination")), []).append(letter["row"])
        if blob.name in report.left_for_a_person:
            continue
        sent = rejected = 0
        try:
            for (target, destination), rows in groups.items():
                result = ingestor.push(
                    target,
                    rows,
                    source=f"replay of {blob.name}",
                    destinations=None if destination is None else [destination],
                )
                sent += result.sent
                rejected += result.rejected
        except TransientError as error:
            report.stopped = f"{blob.name}: {error}"
            report.rows_sent += sent
            return report
        metadata.update(
            replayed="true",
            replayed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            replay_sent=str(sent),
            replay_rejected=str(rejected),
        )
        container.get_blob_client(blob.name).set_blob_metadata(metadata)
        report.blobs_replayed += 1
        report.rows_sent += sent
        report.rows_rejected_again += rejected
        log.info("replayed %s: %d sent, %d rejected again", blob.name, sent, rejected)
    return report


#: Where the Functions host reports a blob its trigger gave up on, for every blob trigger of the
#: storage account (https://learn.microsoft.com/azure/azure-functions/functions-bindings-storage-blob-trigger#poison-blobs).
BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"


#: Poison messages handled together, so that their rows coalesce into full Add Rows calls as
#: they would have under the queue trigger (one message at a time is one POST each).
REPLAY_BATCH = 256


def replay_poison(
    poison: QueueClient,
    handler: QueueIngest,
    limit: int = 10_000,
    blob_function: str | None = None,
    blob_container: str | None = None,
) -> ReplayReport:
    """Handle the poison messages like the queue trigger would, up to ``REPLAY_BATCH`` at once;
    delete each once it succeeds. A transient failure stops the replay; the messages that
    failed stay in the poison queue (visible again after five minutes).

    With ``blob_function``, ``poison`` is the blob trigger's poison queue: each message naming
    a blob of that function in ``blob_container`` resumes the blob from its checkpoint (as a
    ``continueBlob`` would); other messages (the queue serves every blob trigger of the
    storage account) are left where they are.
    """
    from azure.core.exceptions import ResourceNotFoundError

    report = ReplayReport()
    others: dict[str, Any] = {}  # other functions' messages, by id: the latest receipt
    try:
        while report.messages_replayed < limit and report.stopped is None:
            batch: list[tuple[Any, bytes]] = []
            received = 0
            for message in poison.receive_messages(
                messages_per_page=32,
                max_messages=min(REPLAY_BATCH, limit - report.messages_replayed),
                visibility_timeout=300,
            ):
                received += 1
                content = message.content
                body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
                if blob_function is not None:
                    continuation = _blob_continuation(body, blob_function, blob_container)
                    if continuation is None:
                        others[message.id] = message
                        continue
                    body = continuation
                batch.append((message, body))
            if not received:
                break  # nothing visible is left (other functions' messages are hidden for now)
            if not batch:
                continue
            outcomes = asyncio.run(_handle_all(handler, batch))
            unexpected: BaseException | None = None
            for (message, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, TransientError):
                    report.stopped = f"poison message {message.id}: {outcome}"
                elif isinstance(outcome, BaseException):
                    unexpected = unexpected or outcome
                else:  # delivered (or dead-lettered): done, whatever happened to the others
                    poison.delete_message(message)
                    report.messages_replayed += 1
                    if outcome is not None:
                        report.rows_sent += outcome.sent
                        report.rows_rejected_again += outcome.rejected
            if unexpected is not None:
                raise unexpected
    except ResourceNotFoundError:
        return report  # no poison queue: nothing ever failed for good
    finally:
        for message in others.values():  # not ours: visible again for whoever owns it
            with contextlib.suppress(Exception):  # its receipt may be stale: it reappears anyway
                poison.update_message(message, visibility_timeout=0)
    return report


async def _handle_all(
    handler: QueueIngest, batch: list[tuple[Any, bytes]]
) -> list[PushResult | BaseException | None]:
    return await asyncio.gather(
        *(
            handler.handle(body, f"{message.id} (poison)", message.dequeue_count or 1)
            for message, body in batch
        ),
        return_exceptions=True,
    )


def _blob_continuation(body: bytes, function: str, container: str | None) -> bytes | None:
    """A blob poison message of ``function`` (on ``container``, when given) as a
    ``continueBlob`` message, else None."""
    try:
        found = decode(body)
    except ValidationError:
        return None
    if (
        not isinstance(found, dict)
        or found.get("Type") != "BlobTrigger"  # the WebJobs blob extension's BlobTriggerMessage
        or not str(found.get("FunctionId", "")).endswith(f".{function}")
        or not isinstance(found.get("ContainerName"), str)
        or not isinstance(found.get("BlobName"), str)
        or (container is not None and found["ContainerName"] != container)
    ):
        return None
    spec = {"container": found["ContainerName"], "name": found["BlobName"]}
    return json.dumps({"continueBlob": spec}).encode()
