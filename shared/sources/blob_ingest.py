"""Uploaded files to Power BI: stream, validate, push, checkpoint, resume, hand on.

:meth:`BlobIngest.handle` takes a blob (an ``azure.storage.blob.BlobClient``, as the SDK-type
binding gives it), finds its target from the path convention ``<dataset>/<table>/<name>`` (or
the blob's ``dataset``/``table``/``workspace`` metadata), and streams it in chunks through the
readers of :mod:`shared.sources.formats` into :meth:`~shared.engine.ingest.Ingestor.push`,
under the table's ingest profile (with the blob's ``profile`` metadata applied; a profile that
cannot be used dead-letters the blob whole, before any row moves).
After each acknowledged Add Rows it records the position reached for this blob version (ETag);
a re-run resumes there, a new version starts over, a finished one is skipped. When the
remaining rows cannot be sent within the time budget (the hourly quota, a long throttle), it
checkpoints and hands the rest on as a continuation message on the rows queue, due when the
service said to retry, instead of failing.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.contracts import PushResult, Target
from shared.engine.ingest import Ingestor, PushIncomplete
from shared.engine.profile import ProfileError, TableProfile, parse_override
from shared.engine.retry import Deadline
from shared.errors import ForbiddenError, PermanentError, TransientError
from shared.settings import DEFAULT_QUEUED_FILE_BYTES
from shared.sources.formats import DEFAULT_MAX_BYTES, FormatError, detect, read_rows
from shared.stores.checkpoint import Checkpoint, CheckpointStore
from shared.stores.deadletter import DeadLetter, DeadLetterStore

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger(__name__)

#: The blobs' download chunk size: memory per file stays around this, whatever its size.
CHUNK_BYTES = 1024 * 1024
UNTARGETED = Target("_unreadable", "_files")


@dataclass(frozen=True)
class BlobOutcome:
    """What became of one blob version."""

    source: str
    status: str  # "done", "skipped", "continued", "unreadable", "gone"
    result: PushResult | None = None
    resumed_at: int = 0


def _ranges(blob: BlobClient, size: int, etag: str) -> Iterator[bytes]:
    """The blob in ``CHUNK_BYTES`` ranges, each one GET of this version only (a blob changed
    meanwhile fails the read instead of mixing versions). Not ``download_blob().chunks()``:
    its first GET fetches up to 32 MiB (``max_single_get_size``), so memory would grow with the
    file up to that size."""
    from azure.core import MatchConditions

    offset = 0
    while offset < size:
        length = min(CHUNK_BYTES, size - offset)
        yield blob.download_blob(
            offset=offset, length=length, etag=etag, match_condition=MatchConditions.IfNotModified
        ).readall()
        offset += length


def target_of(name: str, metadata: Mapping[str, str]) -> Target | None:
    """The target from metadata (``dataset``, ``table``, optional ``workspace``), else from the
    path ``<dataset>/<table>/<file>``; None when neither gives one."""
    meta = {k.lower(): v for k, v in metadata.items()}
    if meta.get("dataset") and meta.get("table"):
        return Target(meta["dataset"], meta["table"], meta.get("workspace") or None)
    parts = name.split("/")
    if len(parts) >= 3 and parts[0] and parts[1]:
        return Target(parts[0], parts[1], meta.get("workspace") or None)
    return None


class BlobIngest:
    """Ingests blobs; one per process, sharing the ingestor (and so the pacing)."""

    def __init__(
        self,
        ingestor: Ingestor,
        checkpoints: CheckpointStore,
        dead_letters: DeadLetterStore,
        *,
        continuation: Callable[[dict[str, Any], float], None] | None = None,
        time_budget: float = 540.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
        queued_file_bytes: int = DEFAULT_QUEUED_FILE_BYTES,
    ) -> None:
        self.ingestor = ingestor
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.continuation = continuation
        self.time_budget = time_budget
        self.max_bytes = max_bytes
        self._clock = clock
        #: A file at least this big is bulk: the Eventhouse takes it by queued ingestion.
        self.queued_file_bytes = queued_file_bytes

    def handle(self, blob: BlobClient) -> BlobOutcome:
        """Push one blob version's rows, from its checkpoint on. Raises TransientError when the
        blob must be tried again (nothing was handed on)."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            props = blob.get_blob_properties()
        except HttpResponseError as error:
            if not isinstance(error, ResourceNotFoundError) and error.status_code != 400:
                raise  # a transient storage failure: the caller retries
            # Deleted (or never there, or not a valid blob name): nothing to push, nothing lost.
            log.warning(
                "%s/%s no longer exists; nothing to ingest", blob.container_name, blob.blob_name
            )
            return BlobOutcome(
                f"{blob.account_name}/{blob.container_name}/{blob.blob_name}", "gone"
            )
        # The account is part of the name: BlobCreated events bring blobs of other accounts.
        source = f"{blob.account_name}/{blob.container_name}/{blob.blob_name}"
        etag = str(props.etag)
        target = target_of(blob.blob_name, props.metadata or {})
        try:
            if target is None:
                raise FormatError(
                    "no target: put the file at <dataset>/<table>/<name> in the container, or "
                    "set its 'dataset' and 'table' metadata"
                )
            kind, gzipped = detect(blob.blob_name, props.content_settings.content_type)
        except FormatError as error:
            self._unreadable(source, etag, str(error))
            return BlobOutcome(source, "unreadable")
        checkpoint = self.checkpoints.load(source, etag)
        if checkpoint.done:
            log.info("%s (%s) was already ingested; skipped", source, etag)
            return BlobOutcome(source, "skipped", resumed_at=checkpoint.next_row)
        try:
            self._allowed(target)
            profile = self._profile(target, props.metadata or {}, source)
        except (ProfileError, ForbiddenError) as error:
            # Refused before any row moves: a half-applied profile would store values the
            # owner did not mean. Mend the profile and upload the file again.
            self._unreadable(source, etag, str(error))
            return BlobOutcome(source, "unreadable")
        except TransientError as error:
            # A lookup refused with a pause longer than the client waits out (Power BI's
            # Retry-After over POWERBI_MAX_RETRY_AFTER_SECONDS): nothing was sent, so the file
            # is handed on like a pause of Add Rows. Failing the invocation would spend one of
            # the blob's retries on every try until the pause is over. Without a Retry-After
            # (the service unreachable) the host retries the blob as before.
            if error.retry_after is None or self.continuation is None:
                raise
            return self._hand_on(source, etag, error, None, checkpoint.next_row)
        start = checkpoint.next_row
        chunks = _ranges(blob, int(props.size), etag)
        rows = itertools.islice(
            read_rows(chunks, kind, gzipped, self.max_bytes, profile=profile), start, None
        )

        def progress(position: int, _: PushResult) -> None:
            self.checkpoints.save(
                source,
                Checkpoint(etag, start + position, False, checkpoint.sent, checkpoint.rejected),
            )

        names = self._destinations(target)
        # A big file is bulk: the Eventhouse takes it by queued ingestion (Kusto recommends it
        # over streaming for high volumes per table); a small one streams, for latency.
        bulk = int(props.size) >= self.queued_file_bytes
        if len(names) > 1:
            return self._push_each(
                source, etag, target, rows, checkpoint, names, profile, start, bulk
            )
        log.info(
            "ingesting %s (%s, gzip=%s) into %s/%s from row %d",
            source,
            kind,
            gzipped,
            target.dataset,
            target.table,
            start,
        )
        try:
            result = self.ingestor.push(
                target,
                rows,
                deadline=Deadline.after(self.time_budget, self._clock),
                source=source,
                on_progress=progress,
                profile=profile,
                bulk=bulk,
            )
        except PushIncomplete as stopped:
            return self._hand_on(source, etag, stopped, stopped.result, start)
        self.checkpoints.save(
            source,
            Checkpoint(
                etag,
                start + result.received,
                True,
                checkpoint.sent + result.sent,
                checkpoint.rejected + result.rejected,
            ),
        )
        log.info(
            "%s done: %s",
            source,
            {
                k: v
                for k, v in result.to_json().items()
                if k in ("received", "sent", "rejected", "batches")
            },
        )
        return BlobOutcome(source, "done", result, start)

    def _allowed(self, target: Target) -> None:
        """A :class:`ForbiddenError` when callers may not write to the target the blob names
        (ALLOWED_TARGETS): the blob is dead-lettered whole, nothing read. A target that
        cannot be looked up now is the push's to report."""
        if self.ingestor.policy is None:
            return
        try:
            # Not resolve(): a table not routed to Power BI must not create a dataset there.
            self.ingestor.allowed(target)
        except ForbiddenError:
            raise
        except PermanentError:
            return

    def _profile(
        self, target: Target, metadata: Mapping[str, str], source: str
    ) -> TableProfile | None:
        """The table's profile with the blob's own (metadata ``profile``, a JSON object)
        applied. A dataset that cannot be looked up is not this step's to report: the push
        says so for every row."""
        text = next((v for k, v in metadata.items() if k.lower() == "profile"), None)
        where = f"the 'profile' metadata of {source}"
        override = parse_override(text, where) if text else None
        try:
            return self.ingestor.profile(target, override, where)
        except ProfileError:
            raise
        except PermanentError:
            return None

    def _destinations(self, target: Target) -> tuple[str, ...]:
        """The table's destinations; one when its routing cannot be read (the push reports
        the routing file's error)."""
        try:
            return self.ingestor.destinations_of(target)
        except PermanentError:
            return ()

    def _push_each(
        self,
        source: str,
        etag: str,
        target: Target,
        rows: Iterator[Any],
        checkpoint: Checkpoint,
        names: tuple[str, ...],
        profile: TableProfile | None,
        start: int,
        bulk: bool = False,
    ) -> BlobOutcome:
        """A table with several destinations: each has its own position in the checkpoint,
        and a re-run sends each one only the rows it lacks. The rows from ``start`` (the least
        position) to the next position go to the destinations that lack them, and so on; the
        rest of the file to all. Nothing is sent twice to a destination that acknowledged it
        (issue 18: a failure in one never duplicates the other)."""
        positions = {name: max(start, checkpoint.positions.get(name, start)) for name in names}
        bounds = sorted(set(positions.values()))
        deadline = Deadline.after(self.time_budget, self._clock)

        def save() -> None:
            self.checkpoints.save(
                source,
                Checkpoint(
                    etag,
                    min(positions.values()),
                    False,
                    checkpoint.sent,
                    checkpoint.rejected,
                    positions=dict(positions),
                ),
            )

        sent = rejected = 0
        result: PushResult | None = None
        for number, bound in enumerate(bounds):
            end = bounds[number + 1] if number + 1 < len(bounds) else None
            who = tuple(name for name in names if positions[name] <= bound)
            part = rows if end is None else itertools.islice(rows, end - bound)

            def moved(found: Mapping[str, int], base: int = bound) -> None:
                for name, position in found.items():
                    positions[name] = max(positions[name], base + position)
                save()

            def progress(position: int, _: PushResult, base: int = bound, who: Any = who) -> None:
                for name in who:  # every destination of this part has passed ``position``
                    positions[name] = max(positions[name], base + position)
                save()

            log.info(
                "ingesting %s into %s/%s from row %d%s for %s",
                source,
                target.dataset,
                target.table,
                bound,
                "" if end is None else f" to {end}",
                ", ".join(who),
            )
            try:
                result = self.ingestor.push(
                    target,
                    part,
                    deadline=deadline,
                    source=source,
                    on_progress=progress,
                    profile=profile,
                    destinations=None if end is None else who,
                    on_positions=moved,
                    # A lagging part's refused rows were dead-lettered when another
                    # destination passed them: not twice.
                    refused_kept=end is not None,
                    bulk=bulk,
                )
            except PushIncomplete as stopped:
                return self._hand_on(source, etag, stopped, stopped.result, start)
            sent += result.sent
            rejected += result.rejected
        assert result is not None  # there is always a last part
        self.checkpoints.save(
            source,
            Checkpoint(
                etag,
                bounds[-1] + result.received,
                True,
                checkpoint.sent + sent,
                checkpoint.rejected + rejected,
            ),
        )
        log.info("%s done for %s: %s", source, ", ".join(names), result.to_json()["destinations"])
        return BlobOutcome(source, "done", result, start)

    def _hand_on(
        self,
        source: str,
        etag: str,
        stopped: TransientError,
        result: PushResult | None,
        start: int,
    ) -> BlobOutcome:
        """Hand the rest of the file on as a continuation message, due after the service's
        pause (60 s without one), or raise ``stopped`` when the host must retry the blob."""
        if self.continuation is None or (stopped.maybe_delivered and stopped.retry_after is None):
            raise stopped  # the host retries the blob from its checkpoint
        delay = stopped.retry_after or 60.0
        _, container, name = source.split("/", 2)  # <account>/<container>/<name>
        self.continuation(
            {"continueBlob": {"container": container, "name": name, "etag": etag}}, delay
        )
        log.warning("%s: %s; the rest is handed on, due in %.0f s", source, stopped, delay)
        return BlobOutcome(source, "continued", result, start)

    def _unreadable(self, source: str, etag: str, reason: str) -> None:
        self.dead_letters.write(
            UNTARGETED, [DeadLetter(f"{source}: {reason}", {"blob": source, "etag": etag})], source
        )
        self.checkpoints.save(source, Checkpoint(etag, 0, True))
        log.warning("%s dead-lettered: %s", source, reason)
