"""The one core function the triggers call: push rows to a table, and account for every row.

:meth:`Ingestor.push` resolves the target (workspace by name or id, dataset by name or id,
created from ``datasets/<name>.json`` when missing, widened with Put Table when the definition
gained columns), validates and coerces each row, packs the valid ones into the fewest Add Rows
bodies, paces them through the :class:`~shared.engine.governor.Governor`, sends them, and
dead-letters what cannot be delivered. It returns a :class:`~shared.contracts.PushResult`; it
raises only :class:`PushIncomplete` (transient: the caller should redeliver the rows not sent).

Add Rows is not idempotent. Each batch is sent through the one
:class:`~shared.engine.retry.RetryPolicy`, which re-sends it in place only when the failure
proves it was not stored (never sent, 429, 503 with Retry-After, an expired token), or after a
404 once the dataset was looked up again (deleted or recreated out of band: the cached id is
forgotten, the target resolved again by the name the caller gave, created from its definition if
it is gone, and the same batch sent once more). After an ambiguous failure (a timeout, a lost
answer, a 500) its rows are counted as ``unconfirmed`` and delivery stops: re-sending is the
caller's decision (the queue host redelivers; a blob resumes from its checkpoint), and the caller
knows those rows may arrive twice.

The time budget is a :class:`~shared.engine.retry.Deadline` passed as an argument, from
:meth:`Ingestor.push` down to the governor, the policy and the client.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import operator
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.contracts import PushResult, Target, Unreadable
from shared.engine.batching import BLOCK_ROWS, Batch, Block, pack, pack_blocks
from shared.engine.destination import Destination, TableStore
from shared.engine.governor import Governor
from shared.engine.kusto_pacing import KustoPacing
from shared.engine.profile import PROFILE_SUFFIX, ProfileError, TableProfile, compile_profile, merge
from shared.engine.retry import Deadline, RetryPolicy, stored_nothing
from shared.engine.routing import (
    DEFAULT,
    DESTINATIONS,
    EVENTHOUSE,
    POWERBI,
    EventhouseRoute,
    Routing,
    RoutingError,
)
from shared.engine.schema import (
    Column,
    DatasetDefinition,
    RowContext,
    RowValidator,
    TableSchema,
    canonical_type,
)
from shared.engine.targets import TargetPolicy
from shared.engine.textvalues import format_utc
from shared.errors import (
    ConfigError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    PushError,
    RowProblem,
    TransientError,
    ValidationError,
)
from shared.stores.deadletter import DeadLetter, DeadLetterStore
from shared.stores.leases import CreationLock, dataset_lock_name

log = logging.getLogger(__name__)

_ROW_TARGET = re.compile(r"rows\[(\d+)\]")


class PushIncomplete(TransientError):
    """Delivery stopped on a transient failure; ``result`` says what was sent before it.

    Rows ``result.sent`` were acknowledged; the failed batch's rows are ``unconfirmed`` when
    the failure was ambiguous; the rest were not sent.
    """

    def __init__(self, result: PushResult, cause: TransientError) -> None:
        super().__init__(
            f"delivery to {result.target.dataset}/{result.target.table} stopped after "
            f"{result.sent} of {result.received} rows: {cause.message}",
            retry_after=cause.retry_after,
            maybe_delivered=cause.maybe_delivered,
            status=cause.status,
            code=cause.code,
            request_id=cause.request_id,
        )
        self.result = result


@dataclass
class _Resolved:
    """A target's dataset as found (or created) once, and its tables' compiled validators."""

    dataset_id: str
    workspace_id: str | None
    tables: dict[str, TableSchema | None]
    created: bool = False
    name: str = ""  # the dataset's name (the target may give its id)
    validators: dict[tuple[str, TableProfile | None], RowValidator] = field(default_factory=dict)

    def validator(
        self, table: str, profile: TableProfile | None = None, *, keep: bool = True
    ) -> RowValidator | None:
        """The table's validator under ``profile``; kept for reuse when ``keep`` (a declared
        profile, or none: a per-request override is used once)."""
        schema = self.tables[table]
        if schema is None:
            return None
        key = (table, profile)
        validator = self.validators.get(key)
        if validator is None:
            validator = schema.validator(profile)
            if keep:
                self.validators[key] = validator
        return validator


def _looks_like_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class Ingestor:
    """Long-lived (one per process): holds the client, the governor and the resolved targets."""

    def __init__(
        self,
        client: Destination,
        *,
        definitions: Mapping[str, DatasetDefinition] | None = None,
        profiles: Mapping[str, Mapping[str, Any] | ProfileError] | None = None,
        policy: TargetPolicy | None = None,
        governor: Governor | None = None,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        default_workspace: str | None = None,
        creation_lock: CreationLock | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        routing: Mapping[str, Routing | RoutingError] | None = None,
        eventhouse: TableStore | None = None,
        eventhouse_pacing: KustoPacing | None = None,
    ) -> None:
        """``creation_lock`` makes the creation of a missing dataset single-flight across
        processes (shared/stores/leases.py); without it, only within this process.

        ``routing`` (:func:`shared.engine.routing.load_routing`) names each table's
        destinations; a dataset without an entry goes to Power BI only. ``eventhouse`` is the
        KQL cluster of the tables routed there, paced by ``eventhouse_pacing`` (its own:
        Power BI's quotas do not apply to it)."""
        self.client = client
        self.definitions = dict(definitions or {})
        #: Declared ingest profiles as written: dataset -> table -> entry (profile files).
        self.profiles = dict(profiles or {})
        #: Which targets callers may write (None: any; the operator's command line).
        self.policy = policy
        self._compiled: dict[tuple[str, str], TableProfile] = {}
        self.governor = governor or Governor(clock=clock, sleep=sleep)
        self.dead_letters = dead_letters
        self.retry = retry or RetryPolicy()
        self.default_workspace = default_workspace
        #: Held while a missing dataset is created (the Power BI surface's create uses it too).
        self.creation_lock = creation_lock
        self._clock = clock
        self._sleep = sleep
        self._resolved: dict[tuple[str | None, str], _Resolved] = {}
        self._resolve_lock = threading.Lock()
        self.routing = dict(routing or {})
        self.eventhouse = eventhouse
        self.eventhouse_pacing = eventhouse_pacing or KustoPacing(clock=clock, sleep=sleep)
        #: Validators of datasets delivered without Power BI (from their definitions).
        self._local: dict[str, _Resolved] = {}

    # -- resolution -------------------------------------------------------------------------

    def resolve(self, target: Target, deadline: Deadline | None = None) -> _Resolved:
        """Find (or create) the target's dataset once per process; check the table exists.

        With ``deadline``, neither the wait for another caller's lookup nor the lookup's own
        retries go past it: a TransientError instead.
        """
        workspace = target.workspace or self.default_workspace
        key = (workspace, target.dataset)
        resolved = self._resolved.get(key)
        if resolved is None and self.policy is not None and target.workspace is not None:
            # A workspace callers may not use is refused before any request is made for it.
            workspace_id = target.workspace if _looks_like_id(target.workspace) else None
            in_default = self.in_default_workspace(target.workspace, workspace_id, deadline)
            if not self.policy.allows_workspace(target.workspace, workspace_id, in_default):
                raise ForbiddenError(
                    f"callers may not write to workspace {target.workspace!r}: it is not in "
                    f"ALLOWED_TARGETS ({self.policy.describe()})"
                )
        if resolved is None:
            timeout = -1.0 if deadline is None else max(0.0, deadline.left())
            # One lookup (and one creation) at a time, however many invocations race for it.
            if not self._resolve_lock.acquire(timeout=timeout):
                raise TransientError(
                    f"dataset {target.dataset!r}: still being looked up by another caller "
                    "when the time budget ran out",
                    retry_after=1.0,
                )
            try:
                resolved = self._resolved.get(key)
                if resolved is None:
                    resolved = self._resolve(workspace, target.dataset, deadline)
                    self._resolved[key] = resolved
            finally:
                self._resolve_lock.release()
        self._check_allowed(target, resolved, deadline)
        if target.table not in resolved.tables:
            raise NotFoundError(
                f"dataset {target.dataset!r} has no table {target.table!r} (tables: "
                f"{', '.join(sorted(resolved.tables))}); a push dataset cannot gain tables, "
                "so define a new dataset"
            )
        return resolved

    def cached(self, target: Target) -> _Resolved | None:
        """The target's dataset if it was already looked up by this process (no request)."""
        return self._resolved.get((target.workspace or self.default_workspace, target.dataset))

    def in_default_workspace(
        self, workspace: str | None, workspace_id: str | None, deadline: Deadline | None = None
    ) -> bool:
        """Whether a workspace (as named, and its id) is the default one."""
        if workspace is None:
            return True
        default = self.default_workspace
        if default is None:
            return False
        if workspace.casefold() == default.casefold():
            return True
        return workspace_id is not None and workspace_id == self.workspace_id(default, deadline)

    def _check_allowed(
        self, target: Target, resolved: _Resolved, deadline: Deadline | None
    ) -> None:
        if self.policy is None:
            return
        name = resolved.name or target.dataset
        if not self.policy.allows(
            target.workspace,
            resolved.workspace_id,
            self.in_default_workspace(target.workspace, resolved.workspace_id, deadline),
            name,
            resolved.dataset_id,
            name in self.definitions,
        ):
            raise ForbiddenError(
                f"callers may not write to {target.workspace or 'the default workspace'}/"
                f"{name}: it is not in ALLOWED_TARGETS ({self.policy.describe()})"
            )

    def provision(self, definition: DatasetDefinition, workspace: str | None = None) -> _Resolved:
        """Make sure ``definition``'s dataset exists (created if missing, never overwritten;
        widened when the definition added columns). Returns what was found or made."""
        self.definitions[definition.name] = definition
        first_table = next(iter(definition.tables))
        return self.resolve(Target(definition.name, first_table, workspace))

    def workspace_id(self, workspace: str | None, deadline: Deadline | None = None) -> str | None:
        """A workspace given by id or by name (looked up once), or None for My workspace."""
        if not workspace:
            return None
        if _looks_like_id(workspace):
            return workspace
        return self.client.group_id(workspace, deadline=deadline)

    def profile(
        self,
        target: Target,
        override: Mapping[str, Any] | None = None,
        where: str = "the request",
        deadline: Deadline | None = None,
    ) -> TableProfile | None:
        """The target table's ingest profile: its declared entry
        (``datasets/<dataset>.profile.json``) with ``override`` (a blob's or a request's)
        applied, checked against the table's columns and compiled; None when neither exists.
        Raises :class:`ProfileError` naming the file (or ``where``) and the field; declared
        profiles are compiled once."""
        tables = self.profiles.get(target.dataset) or {}
        if isinstance(tables, ProfileError):
            raise tables  # the file itself is unusable: every table of it is refused
        declared = tables.get(target.table)
        if declared is None and not override:
            return None
        key = (target.dataset, target.table)
        if not override and key in self._compiled:
            return self._compiled[key]
        named = [f"{target.dataset}{PROFILE_SUFFIX}"] if declared is not None else []
        if override:
            named.append(where)
        source = " with ".join(named)
        schema = self._schema(target, deadline)
        if schema is None:
            raise ProfileError(
                source,
                f"tables.{target.table}",
                f"the columns of {target.dataset}/{target.table} are not known (no definition "
                f"datasets/{target.dataset}.json, and Power BI did not report them), so the "
                "profile cannot be checked; add the definition",
            )
        profile = compile_profile(schema, merge(declared or {}, override or {}), source)
        if not override:
            self._compiled[key] = profile
        return profile

    def _schema(self, target: Target, deadline: Deadline | None) -> TableSchema | None:
        definition = self.definitions.get(target.dataset)
        if definition is not None and target.table in definition.tables:
            return definition.tables[target.table]
        return self.resolve(target, deadline).tables.get(target.table)

    def forget(self, target: Target, dataset_id: str | None = None) -> None:
        """Drop a cached resolution (e.g. after the dataset was deleted). With ``dataset_id``,
        only if that is still the cached id: a caller that met the stale id late must not drop
        the fresh resolution another caller has just made."""
        key = (target.workspace or self.default_workspace, target.dataset)
        with self._resolve_lock:
            cached = self._resolved.get(key)
            if cached is not None and dataset_id in (None, cached.dataset_id):
                del self._resolved[key]

    def _resolve(
        self, workspace: str | None, dataset: str, deadline: Deadline | None = None
    ) -> _Resolved:
        workspace_id = self.workspace_id(workspace, deadline)
        where = f"workspace {workspace!r}" if workspace else "My workspace"

        def look() -> list[dict[str, Any]]:
            found = self.client.get_datasets(workspace_id, deadline=deadline)
            return [d for d in found if d.get("id") == dataset] or [
                d for d in found if d.get("name") == dataset
            ]

        matches = look()
        name = matches[0].get("name", dataset) if matches else dataset
        definition = self.definitions.get(name)
        if not matches:
            if definition is None:
                raise NotFoundError(
                    f"dataset {dataset!r} does not exist in {where}, and there is no definition "
                    f"datasets/{dataset}.json to create it from"
                )
            lock = self.creation_lock
            held: AbstractContextManager[bool] = (
                contextlib.nullcontext(False)
                if lock is None
                else lock.hold(dataset_lock_name(workspace_id, name), deadline)
            )
            with held:
                if lock is not None:
                    # Other processes met the same missing dataset; the one that held the lock
                    # before this one has created it: look again, now that no one else can.
                    matches = look()
                if not matches:
                    created = self.client.create_dataset(
                        definition.body, workspace_id, deadline=deadline
                    )
                    log.info("created dataset %s (%s) in %s", name, created["id"], where)
                    return _Resolved(
                        str(created["id"]),
                        workspace_id,
                        dict(definition.tables),
                        created=True,
                        name=name,
                    )
            log.info("dataset %s in %s was created by another process meanwhile", name, where)
        if len(matches) > 1:
            # Two processes met an empty workspace at once, or someone made a second one. Every
            # process must deliver to the same one: the smallest id, whatever order the
            # service lists them in.
            matches = sorted(matches, key=lambda d: str(d.get("id")))
            log.warning(
                "%d datasets are named %r in %s (%s): using %s, the smallest id; delete the "
                "others or address this one by id",
                len(matches),
                dataset,
                where,
                ", ".join(str(d.get("id")) for d in matches),
                matches[0].get("id"),
            )
        dataset_id = str(matches[0]["id"])
        live = {
            t["name"]: t
            for t in self.client.get_tables(dataset_id, workspace_id, deadline=deadline)
        }
        tables: dict[str, TableSchema | None] = {
            table: _schema_from_service(table, body) for table, body in live.items()
        }
        if definition is not None:
            for table, schema in definition.tables.items():
                if table in live and self._widen(
                    dataset_id, workspace_id, definition, live[table], deadline
                ):
                    tables[table] = schema
        return _Resolved(dataset_id, workspace_id, tables, name=name)

    def _widen(
        self,
        dataset_id: str,
        workspace_id: str | None,
        definition: DatasetDefinition,
        live: dict[str, Any],
        deadline: Deadline | None = None,
    ) -> bool:
        """Apply an additive column change with Put Table; never remove or retype a column.
        Returns whether the definition's schema now describes the live table."""
        name = live["name"]
        wanted = next(t for t in definition.body["tables"] if t["name"] == name)
        if not live.get("columns"):
            return True
        drift = definition.tables[name].drift(live["columns"])
        if drift.conflicts:
            log.warning(
                "table %s of dataset %s differs from its definition in more than added columns "
                "(%s); left as it is (the service checks the values)",
                name,
                dataset_id,
                "; ".join(drift.conflicts[:5]),
            )
            return False
        if not drift.added:
            return True
        self.client.put_table(dataset_id, wanted, workspace_id, deadline=deadline)
        log.info(
            "table %s of dataset %s: added columns %s",
            name,
            dataset_id,
            list(drift.added),
        )
        return True

    def problems(
        self,
        target: Target,
        rows: Sequence[Any],
        *,
        profile: TableProfile | None = None,
        deadline: Deadline | None = None,
    ) -> list[RowProblem]:
        """Every problem of ``rows`` for ``target`` (under its profile), nothing sent: what an
        all-or-nothing caller checks before :meth:`push`. Raises what resolving the target
        raises (NotFoundError, a transient failure). A table not routed to Power BI is
        checked against its definition, with no Power BI call (nothing is created there)."""
        declared = profile is None
        if self.allowed(target, deadline) is None:
            validator = self._local_validator(
                target,
                self.profile(target, deadline=deadline) if declared else profile,
                declared,
            )
        else:
            resolved = self.resolve(target, deadline)
            profile = self.profile(target, deadline=deadline) if declared else profile
            validator = resolved.validator(target.table, profile, keep=declared)
        found: list[RowProblem] = []
        for start in range(0, len(rows), BLOCK_ROWS):
            block = list(rows[start : start + BLOCK_ROWS])
            if validator is not None and validator.check_block(block, start) is not None:
                continue
            for index, row in enumerate(block, start):
                result = validator(row, index) if validator is not None else _plain(row, index)
                if isinstance(result, RowProblem):
                    found.append(result)
        return found

    # -- delivery ---------------------------------------------------------------------------

    def push(
        self,
        target: Target,
        rows: Iterable[Any],
        *,
        deadline: Deadline | None = None,
        source: str | None = None,
        dead_letter: bool = True,
        on_progress: Callable[[int, PushResult], None] | None = None,
        profile: TableProfile | None = None,
        destinations: Sequence[str] | None = None,
        on_positions: Callable[[Mapping[str, int]], None] | None = None,
        refused_kept: bool = False,
        bulk: bool = False,
    ) -> PushResult:
        """Push ``rows`` (an iterable: a list, or a stream read lazily) to ``target``.

        ``deadline`` is the trigger's time budget: no wait goes past it, and no request outlives
        it by more than a second. ``source`` is recorded with dead letters (a file and line, a
        message id). Permanent failures are dead-lettered (unless ``dead_letter`` is False: a
        synchronous HTTP caller gets its rejected rows back instead) and reported in the
        result; a transient one raises :class:`PushIncomplete`, after dead-lettering what was
        refused. ``on_progress(n, result)`` is called after each acknowledged Add Rows, once
        every row before position ``n`` is either acknowledged or dead-lettered (a checkpoint
        may be written then), with the result so far (rows sent, rejected). ``profile`` is
        the table's ingest profile with the caller's override applied (:meth:`profile`);
        without one, the declared profile applies, if any.

        ``destinations`` restricts delivery to some of the table's destinations (a replayed
        dead letter goes only to the one that refused it); by default the table's routing
        decides (:mod:`shared.engine.routing`). With several destinations, each is delivered
        on its own and the result has one entry per destination (``result.destinations``);
        :class:`PushIncomplete` is raised when any of them stopped on a transient failure.
        ``on_positions({destination: n})`` is then called whenever one of them has
        acknowledged or dead-lettered every row before its ``n`` (after the dead letters are
        kept), so a caller can checkpoint each destination on its own; it is never called for
        a table delivered to Power BI alone (``on_progress`` says it all). ``refused_kept``:
        the rows are a restricted re-send whose refused rows were dead-lettered already
        (:class:`Part`). ``bulk``: the rows are a big file's, for the Eventhouse's queued
        ingestion rather than streaming.
        """
        (result,) = self.push_parts(
            target,
            [Part(rows, source, refused_kept)],
            deadline=deadline,
            dead_letter=dead_letter,
            on_progress=on_progress,
            profile=profile,
            destinations=destinations,
            on_positions=on_positions,
            bulk=bulk,
        )
        stopped = result.incomplete
        if stopped is not None and stopped.cause is not None:
            raise PushIncomplete(result, stopped.cause)
        return result

    def push_parts(
        self,
        target: Target,
        parts: Sequence[Part],
        *,
        deadline: Deadline | None = None,
        dead_letter: bool = True,
        on_progress: Callable[[int, PushResult], None] | None = None,
        profile: TableProfile | None = None,
        destinations: Sequence[str] | None = None,
        on_positions: Callable[[Mapping[str, int]], None] | None = None,
        bulk: bool = False,
    ) -> list[PushResult]:
        """Push several callers' rows together (the fewest POSTs for all of them) and account
        for each part separately: one :class:`PushResult` per part, in order.

        A transient failure does not raise here: each part whose rows were not all delivered
        has ``stopped`` set (and ``cause``), so each caller can decide on its own.
        ``destinations``, ``on_positions`` and ``bulk``: as for :meth:`push`.
        """
        target = self._by_name(target, deadline)
        try:
            chosen = self.destinations_of(target, destinations)
        except ConfigError as error:
            # The routing file cannot be used: every row is refused with its error (kept as
            # dead letters naming no destination, so that a replay after the fix routes them).
            refused = _Run(target, parts, dead_letter)
            refused.fail(error)
            for index, row in refused.rows():
                refused.reject(RowProblem(index, error.message), row, error, shared=True)
            self._store(refused)
            return refused.results
        if chosen != DEFAULT:
            return self._push_fanout(
                target,
                parts,
                chosen,
                deadline,
                dead_letter,
                on_progress,
                profile,
                on_positions,
                bulk,
            )
        run = _Run(target, parts, dead_letter)
        run.on_progress = on_progress
        run.profile = profile
        try:
            self._run(run, deadline)
        except TransientError as error:
            run.stop(error)
        except Exception as error:
            # The rows' source itself failed (an unreadable file, say): keep what was already
            # refused, then let the caller see the failure.
            run.stop(None, str(error))
            self._store(run)
            raise
        self._store(run)
        return run.results

    def _run(self, run: _Run, deadline: Deadline | None) -> None:
        target = run.target
        try:
            resolved = self.resolve(target, deadline)
            declared = run.profile is None
            profile = self.profile(target, deadline=deadline) if declared else run.profile
        except PermanentError as error:
            run.fail(error)
            run.reject_all(run.rows(), error)
            return
        run.resolved = resolved
        run.dataset(resolved.dataset_id, resolved.workspace_id)
        validator = resolved.validator(target.table, profile, keep=declared)
        batches = pack_blocks(
            self._validated(run, validator, run.reject),
            on_reject=run.reject,
            keep_together=run.groups(),
        )
        self._deliver_all(batches, run, deadline)

    def _validated(
        self,
        run: _Run,
        validator: RowValidator | None,
        reject: Callable[[RowProblem, Any], None],
    ) -> Iterator[Block]:
        """The run's rows, read in blocks and validated once: the valid ones in blocks, the
        refused ones handed to ``reject``. The ingestion time derived columns take is now."""
        if validator is not None:
            validator = validator.with_context(
                RowContext(run.parts[0].source, format_utc(datetime.now(UTC)))
            )
        return self._blocks(run, validator, reject)

    def _blocks(
        self,
        run: _Run,
        validator: RowValidator | None,
        reject: Callable[[RowProblem, Any], None],
    ) -> Iterator[Block]:
        def checked(items: list[tuple[int, Any]]) -> Iterator[Block]:
            """One block of rows, validated together when they can be, else row by row."""
            if validator is not None:
                first = items[0][0]  # run.rows() numbers rows one by one
                fast = validator.check_block(list(map(operator.itemgetter(1), items)), first)
                if fast is not None:
                    yield Block(list(range(first, first + len(items))), *fast)
                    return
            indices: list[int] = []
            rows: list[dict[str, Any]] = []
            for index, row in items:
                if isinstance(row, Unreadable):  # a part of a file that is not a row
                    reject(RowProblem(index, row.reason), row.text)
                    continue
                result = validator(row, index) if validator else _plain(row, index)
                if isinstance(result, RowProblem):
                    reject(result, row)
                else:
                    indices.append(index)
                    rows.append(result)
            if indices:
                yield Block(indices, rows)

        # Rows are read in blocks of BLOCK_ROWS; when the source fails mid-block, the
        # rows read before the failure are still validated and packed (as row by row).
        # list.extend keeps what it took before the error (CPython appends each item
        # as it comes; tests/unit/engine/test_ingest_blocks.py checks it).
        source = run.rows()
        while True:
            items: list[tuple[int, Any]] = []
            failure: Exception | None = None
            try:
                items.extend(itertools.islice(source, BLOCK_ROWS))
            except Exception as error:
                failure = error
            if items:
                yield from checked(items)
            if failure is not None:
                raise failure
            if len(items) < BLOCK_ROWS:
                return

    def _deliver_all(self, batches: Iterator[Batch], run: _Run, deadline: Deadline | None) -> None:
        """Send every batch to Power BI; after a permanent failure, dead-letter the rest."""
        target = run.target
        for batch in batches:
            try:
                self._deliver(batch, run, deadline)
            except PermanentError as error:
                # The dataset, the table or the identity is not usable (a 404 even after the
                # target was looked up again): this batch and every row after it go to the dead
                # letters with this reason.
                run.fail(error)
                run.reject_all(zip(batch.indices, batch.rows, strict=True), error)
                for later in batches:
                    run.reject_all(zip(later.indices, later.rows, strict=True), error)
                if isinstance(error, NotFoundError) and run.resolved is not None:
                    self.forget(target, run.resolved.dataset_id)
                return

    # -- several destinations (issue 18) ----------------------------------------------------

    def destinations_of(
        self, target: Target, requested: Sequence[str] | None = None
    ) -> tuple[str, ...]:
        """Where ``target``'s rows go: the table's routing (Power BI alone without a routing
        file), restricted to ``requested`` when given. A :class:`ConfigError` when the routing
        file is unusable, or names a destination this process cannot deliver to. Routing is by
        name: :meth:`push_parts` first names a dataset given by id (:meth:`_by_name`)."""
        routing = self.routing.get(target.dataset)
        if isinstance(routing, RoutingError):
            raise routing
        chosen = routing.destinations(target.table) if routing is not None else DEFAULT
        if requested is not None:
            unknown = sorted(set(requested) - set(DESTINATIONS))
            if unknown or not requested:
                raise ConfigError(
                    "destinations",
                    f"{list(requested)!r}: use some of {', '.join(DESTINATIONS)}",
                )
            chosen = tuple(name for name in DESTINATIONS if name in requested)
        if EVENTHOUSE in chosen and (
            self.eventhouse is None or routing is None or routing.eventhouse is None
        ):
            raise ConfigError(
                "EVENTHOUSE_URI",
                f"rows of {target.dataset}/{target.table} are for the Eventhouse, but "
                + (
                    f"datasets/{target.dataset}.destinations.json does not route it there"
                    if routing is None or routing.eventhouse is None
                    else "this process has no Eventhouse client"
                ),
            )
        return chosen

    def _by_name(self, target: Target, deadline: Deadline | None) -> Target:
        """``target`` naming its dataset by name when it gives the id of a Power BI dataset
        whose name has a routing file (a Power BI client of the surface knows ids only);
        otherwise ``target`` itself. Routing, definitions and dead letters go by name."""
        if not self.routing or target.dataset in self.routing or not _looks_like_id(target.dataset):
            return target
        try:
            resolved = self.cached(target) or self.resolve(target, deadline)
        except PushError:
            return target  # the delivery meets the same failure and accounts for it
        if resolved.name not in self.routing:
            return target
        return Target(resolved.name, target.table, target.workspace)

    def allowed(self, target: Target, deadline: Deadline | None = None) -> _Resolved | None:
        """Raise :class:`ForbiddenError` when callers may not write to ``target``
        (ALLOWED_TARGETS) or a PermanentError when it cannot be used. A table delivered to
        Power BI is looked up there (created from its definition if missing) and returned;
        one that is not is checked by name and against its definition, with no Power BI call
        (None)."""
        if POWERBI in self.destinations_of(target):
            return self.resolve(target, deadline)
        self._check_caller(target)
        definition = self.definitions.get(target.dataset)
        if definition is None or target.table not in definition.tables:
            raise NotFoundError(
                f"{target.dataset}/{target.table}: datasets/{target.dataset}.json does not "
                "define that table"
            )
        return None

    def _check_caller(self, target: Target) -> None:
        """ALLOWED_TARGETS for rows that may not go through Power BI's lookup (which checks
        it with the ids it finds): by the names the caller gave, no request made."""
        if self.policy is None:
            return
        default = self.default_workspace
        in_default = target.workspace is None or (
            default is not None and target.workspace.casefold() == default.casefold()
        )
        if not self.policy.allows(
            target.workspace,
            None,
            in_default,
            target.dataset,
            "",
            target.dataset in self.definitions,
        ):
            raise ForbiddenError(
                f"callers may not write to {target.workspace or 'the default workspace'}/"
                f"{target.dataset}: it is not in ALLOWED_TARGETS ({self.policy.describe()})"
            )

    def _local_validator(
        self, target: Target, profile: TableProfile | None, keep: bool
    ) -> RowValidator | None:
        """The table's validator from its definition alone (no Power BI lookup)."""
        definition = self.definitions[target.dataset]
        with self._resolve_lock:
            local = self._local.get(definition.name)
            if local is None:
                local = _Resolved("", None, dict(definition.tables), name=definition.name)
                self._local[definition.name] = local
        return local.validator(target.table, profile, keep=keep)

    def _push_fanout(
        self,
        target: Target,
        parts: Sequence[Part],
        chosen: tuple[str, ...],
        deadline: Deadline | None,
        dead_letter: bool,
        on_progress: Callable[[int, PushResult], None] | None,
        profile: TableProfile | None,
        on_positions: Callable[[Mapping[str, int]], None] | None = None,
        bulk: bool = False,
    ) -> list[PushResult]:
        """:meth:`push_parts` for a table with destinations other than Power BI alone: the
        rows are read and validated once, and each destination gets every valid row, paced,
        retried and accounted on its own (:class:`_Fanout`)."""
        fan = _Fanout({name: _Run(target, parts, dead_letter, name) for name in chosen})
        fan.on_progress = on_progress
        fan.on_positions = on_positions
        fan.bulk = bulk
        fan.store = lambda: self._store_fan(fan)
        try:
            self._run_fanout(fan, deadline, profile)
        except TransientError as error:  # the rows' source, read for every destination
            fan.stop_all(error)
        except Exception as error:
            fan.stop_all(None, str(error))
            self._store_fan(fan)
            raise
        fan.stop_all(None)
        self._store_fan(fan)
        return fan.results()

    def _run_fanout(
        self, fan: _Fanout, deadline: Deadline | None, profile: TableProfile | None
    ) -> None:
        leader = fan.leader
        target = leader.target
        powerbi = fan.runs.get(POWERBI)
        eventhouse = fan.runs.get(EVENTHOUSE)
        declared = profile is None
        try:
            self._check_caller(target)
            definition = self.definitions.get(target.dataset)
            if definition is None or target.table not in definition.tables:
                raise NotFoundError(
                    f"{target.dataset}/{target.table} is routed to several destinations but "
                    f"datasets/{target.dataset}.json does not define that table"
                )
            profile = self.profile(target, deadline=deadline) if declared else profile
        except PermanentError as error:
            for run in fan.runs.values():
                run.fail(error)
            for index, row in leader.rows():
                fan.reject(RowProblem(index, error.message), row, error)
            return
        failed: dict[str, PermanentError] = {}
        resolved: _Resolved | None = None
        if powerbi is not None:
            try:
                resolved = self.resolve(target, deadline)
                powerbi.resolved = resolved
                powerbi.dataset(resolved.dataset_id, resolved.workspace_id)
                powerbi.on_progress = lambda n, _: fan.passed(POWERBI, n)
            except PermanentError as error:
                powerbi.fail(error)
                failed[POWERBI] = error
            except TransientError as error:
                fan.causes[POWERBI] = error
        if resolved is not None:
            validator = resolved.validator(target.table, profile, keep=declared)
        else:
            validator = self._local_validator(target, profile, declared)
        blocks = self._validated(leader, validator, fan.reject)
        sink = (
            _EventhouseSink(self, eventhouse, fan, definition, deadline)
            if eventhouse is not None
            else None
        )

        def tapped() -> Iterator[Block]:
            """Each valid block, handed to every destination as it is read."""
            try:
                for block in blocks:
                    if sink is not None:
                        sink.accept(block)
                    if powerbi is not None and POWERBI in failed:
                        powerbi.reject_all(
                            zip(block.indices, _dicts(block.rows), strict=True),
                            failed[POWERBI],
                            shared=False,
                        )
                        fan.passed(POWERBI, block.indices[-1] + 1)
                    yield block
            except Exception as error:
                fan.source_error = error
                raise

        stream = tapped()
        try:
            if powerbi is not None and POWERBI not in failed and POWERBI not in fan.causes:
                batches = pack_blocks(
                    stream,
                    on_reject=lambda problem, row: powerbi.reject(problem, row, shared=False),
                    keep_together=leader.groups(),
                )
                try:
                    self._deliver_all(batches, powerbi, deadline)
                except TransientError as error:
                    if error is fan.source_error:
                        raise
                    # Power BI stops here; the other destinations still get every row.
                    fan.causes[POWERBI] = error
            for _ in stream:  # the rest of the rows, for the destinations still going
                pass
            if sink is not None:
                sink.finish()
        finally:
            if sink is not None:
                sink.settle()  # a chunk still in flight when the source failed is accounted

    def _store_fan(self, fan: _Fanout) -> None:
        """Every destination's dead letters; rows refused before delivery are kept once (by
        the leader) and counted as dead-lettered by every destination."""
        leader = fan.leader
        self._store(leader)
        for run in fan.followers:
            self._store(run)
            for number, kept in enumerate(leader.shared_kept):
                new = kept - run.shared_kept[number]
                if new:
                    result = run.results[number]
                    result.dead_lettered += new
                    result.dead_letter_location = (
                        result.dead_letter_location or leader.results[number].dead_letter_location
                    )
                    run.shared_kept[number] = kept

    def _deliver(self, batch: Batch, run: _Run, deadline: Deadline | None) -> None:
        """Send one batch; split out the rows the service names as bad and send the rest."""
        try:
            self._send(batch, run, deadline)
        except ValidationError as error:
            named = {int(m) for m in _ROW_TARGET.findall(str(error)) if int(m) < batch.count}
            keep: list[tuple[int, dict[str, Any]]] = []
            for position, (index, row) in enumerate(zip(batch.indices, batch.rows, strict=True)):
                if not named or position in named:
                    run.reject(
                        RowProblem(index, f"refused by Power BI: {error.message}"), row, error
                    )
                else:
                    keep.append((index, row))
            for smaller in pack(keep):
                self._deliver(smaller, run, deadline)

    def _send(self, batch: Batch, run: _Run, deadline: Deadline | None) -> None:
        """Add Rows for one batch, paced, through the retry policy (see ``retry``): re-sent in
        place only where that cannot duplicate rows, and once after a 404 with the target looked
        up again."""
        table = run.target.table

        def attempt() -> None:
            resolved = run.current()
            with self.governor.slot(
                resolved.dataset_id,
                batch.count,
                deadline,
                max_pause=self.retry.max_retry_after,
                table=table,
            ) as waited:
                run.waited(batch, waited)
                self.client.post_rows(
                    resolved.dataset_id,
                    table,
                    batch.body,
                    resolved.workspace_id,
                    deadline=deadline,
                )

        def pause(seconds: float) -> None:
            # The service said when: every caller of this dataset waits, not only this one,
            # and the next slot() does the waiting.
            self.governor.pause(run.current().dataset_id, seconds)

        def recover(error: PushError) -> None:
            # A 404 stored nothing. The dataset was deleted (or deleted and made again, so it
            # has a new id) since it was looked up: look it up again by the name the caller
            # gave (created from its definition if it is gone), then the batch goes once more.
            stale = run.current()
            self.forget(run.target, stale.dataset_id)
            fresh = self.resolve(run.target, deadline)
            run.resolved = fresh
            run.dataset(fresh.dataset_id, fresh.workspace_id)
            log.warning(
                "%s/%s: dataset %s not found (%s); looked up again as %s, re-sending the batch",
                run.target.dataset,
                table,
                stale.dataset_id,
                error.message,
                fresh.dataset_id,
            )

        def on_retry(error: PushError, wait: float) -> None:
            run.retried(batch)
            log.warning("%s/%s: %s; retrying in %.1f s", run.target.dataset, table, error, wait)

        try:
            self.retry.run(
                attempt,
                idempotent=False,
                deadline=deadline,
                sleep=self._sleep,
                on_retry=on_retry,
                pause=pause,
                recover=recover,
            )
        except TransientError as error:
            if not stored_nothing(error):
                run.unconfirmed(batch)
            raise
        run.acknowledged(batch)
        if run.on_progress is not None:
            # Dead letters first: a checkpoint must never pass a refused row not yet kept.
            self._store(run)
            run.on_progress(batch.indices[-1] + 1, run.results[0])

    def _store(self, run: _Run) -> None:
        if self.dead_letters is None or not run.dead_letter:
            return
        for number, (part, result) in enumerate(zip(run.parts, run.results, strict=True)):
            letters = run.letters[number]
            if not letters:
                continue
            result.dead_letter_location = self.dead_letters.write(run.target, letters, part.source)
            result.dead_lettered += len(letters)
            run.shared_kept[number] += sum(1 for letter in letters if letter.destination is None)
            run.letters[number] = []  # kept: never written twice
            log.warning(
                "%d rows for %s/%s dead-lettered to %s",
                len(letters),
                run.target.dataset,
                run.target.table,
                result.dead_letter_location,
            )


@dataclass(frozen=True)
class Part:
    """One caller's rows in a :meth:`Ingestor.push_parts` call, and where they came from."""

    rows: Iterable[Any]
    source: str | None = None
    #: The rows are a re-send, restricted to the destinations that failed, of rows whose first
    #: delivery dead-lettered those refused before delivery (validation): they are counted as
    #: refused and dead-lettered again, but no second letter is written (a replay of both
    #: would deliver them twice).
    refused_kept: bool = False


class _Run:
    """One delivery: the parts' rows numbered as one stream, and each part's result and dead
    letters, attributed row by row (a batch may carry rows of several parts)."""

    def __init__(
        self,
        target: Target,
        parts: Sequence[Part],
        dead_letter: bool = True,
        destination: str = POWERBI,
    ) -> None:
        self.target = target
        self.parts = list(parts)
        self.dead_letter = dead_letter
        #: The destination this run delivers to, named by the dead letters it refuses.
        self.destination = destination
        self.results = [PushResult(target) for _ in self.parts]
        self.letters: list[list[DeadLetter]] = [[] for _ in self.parts]
        #: Dead letters kept of rows refused before delivery (naming no destination), per
        #: part: a follower of a :class:`_Fanout` counts them as its own too.
        self.shared_kept = [0 for _ in self.parts]
        self.on_progress: Callable[[int, PushResult], None] | None = None
        self.profile: TableProfile | None = None
        #: The target as resolved now (looked up again when Add Rows answers 404).
        self.resolved: _Resolved | None = None
        self._starts: list[int] = []  # first stream index of each part, filled while reading
        self._read: set[int] = set()  # parts read to their end
        for part, result in zip(self.parts, self.results, strict=True):
            if isinstance(part.rows, Sized):
                result.received = len(part.rows)

    def groups(self) -> dict[int, int]:
        """Where each part of known length starts in the stream, and its length (for
        :func:`pack` to keep a part in one POST); streamed parts (files) are not grouped."""
        found: dict[int, int] = {}
        index = 0
        for part in self.parts:
            if not isinstance(part.rows, Sized):
                break  # later starts are unknown until the stream is read
            if len(self.parts) > 1:
                found[index] = len(part.rows)
            index += len(part.rows)
        return found

    def rows(self) -> Iterator[tuple[int, Any]]:
        """Every part's rows in order, numbered as one stream; streams are counted as read."""
        index = 0
        for number, part in enumerate(self.parts):
            self._starts.append(index)
            sized = isinstance(part.rows, Sized)
            for row in part.rows:
                if not sized:
                    self.results[number].received += 1
                yield index, row
                index += 1
            self._read.add(number)

    def _owner(self, index: int) -> tuple[int, int]:
        """(part number, index within the part) of a stream index."""
        number = bisect.bisect_right(self._starts, index) - 1
        return number, index - self._starts[number]

    def _by_part(self, batch: Batch) -> dict[int, int]:
        first = self._owner(batch.indices[0])[0]
        if first == self._owner(batch.indices[-1])[0]:  # indices rise: all of one part
            return {first: batch.count}
        counts: dict[int, int] = {}
        for index in batch.indices:
            number = self._owner(index)[0]
            counts[number] = counts.get(number, 0) + 1
        return counts

    def current(self) -> _Resolved:
        assert self.resolved is not None, "the target is resolved before any batch is sent"
        return self.resolved

    def dataset(self, dataset_id: str, workspace_id: str | None) -> None:
        for result in self.results:
            result.dataset_id = dataset_id
            result.workspace_id = workspace_id

    def acknowledged(self, batch: Batch) -> None:
        for number, count in self._by_part(batch).items():
            self.results[number].sent += count
            self.results[number].batches += 1

    def unconfirmed(self, batch: Batch) -> None:
        for number, count in self._by_part(batch).items():
            self.results[number].unconfirmed += count

    def retried(self, batch: Batch) -> None:
        for number in self._by_part(batch):
            self.results[number].retries += 1

    def waited(self, batch: Batch, seconds: float) -> None:
        for number in self._by_part(batch):
            self.results[number].throttle_wait += seconds

    def reject(
        self,
        problem: RowProblem,
        row: Any,
        error: PushError | None = None,
        *,
        shared: bool | None = None,
    ) -> None:
        """Refuse one row for good. Its dead letter names this run's destination when the
        destination (or its target) refused it, none when it was refused before delivery
        (``shared``; by default, when there is no ``error``: validation)."""
        number, local = self._owner(problem.index)
        own = RowProblem(local, problem.reason, problem.column)
        self.results[number].note_problem(own)
        if shared is None:
            shared = error is None
        if shared and self.parts[number].refused_kept:
            # Its letter was kept by the delivery this part re-sends (see Part).
            self.results[number].dead_lettered += 1
            self.shared_kept[number] += 1  # a follower counts it too (_Fanout.store)
            return
        self.letters[number].append(
            DeadLetter(
                own.reason,
                row,
                own.index,
                own.column,
                error.status if error else None,
                error.code if error else None,
                None if shared else self.destination,
            )
        )

    def reject_all(
        self, rows: Iterable[tuple[int, Any]], error: PushError, *, shared: bool | None = None
    ) -> None:
        for index, row in rows:
            self.reject(RowProblem(index, error.message), row, error, shared=shared)

    def note(self, problem: RowProblem) -> None:
        """Count a row refused before delivery whose dead letter another run of the same rows
        keeps (:class:`_Fanout`): refused here too, written once."""
        number, local = self._owner(problem.index)
        self.results[number].note_problem(RowProblem(local, problem.reason, problem.column))

    def follow(self, leader: _Run) -> None:
        """Read nothing itself: the rows are ``leader``'s, numbered as it reads them."""
        self._starts = leader._starts
        self._read = leader._read

    def received_from(self, leader: _Run) -> None:
        """Streamed parts are counted as read by ``leader``."""
        for mine, theirs in zip(self.results, leader.results, strict=True):
            mine.received = theirs.received

    def fail(self, error: PushError) -> None:
        for result in self.results:
            result.failure = error

    def resume_at(self, position: int) -> None:
        """Every row before stream ``position`` is acknowledged or dead-lettered: set each
        stopped part's ``resume_from`` (its own index of the first row that may not be)."""
        for number, result in enumerate(self.results):
            if result.stopped is None or number >= len(self._starts):
                continue
            result.resume_from = min(max(0, position - self._starts[number]), result.received)

    def stop(self, cause: TransientError | None, reason: str | None = None) -> None:
        """Delivery stopped: every part with rows not delivered says why."""
        for number, result in enumerate(self.results):
            done = number in self._read and result.unsent == 0 and result.unconfirmed == 0
            if cause is None or not done:
                result.stopped = reason or (cause.message if cause else "stopped")
                result.cause = cause


#: Rows per Eventhouse ingestion. Power BI's rows per Add Rows (limits.MAX_ROWS_PER_POST), so a
#: chunk holds what one Power BI batch can: at a few hundred bytes a row, a few MB of JSON
#: lines, which gzip brings well under the 4 MB streaming limit; a larger chunk is queued by
#: the client itself (shared/destinations/eventhouse.py).
EVENTHOUSE_CHUNK_ROWS = 10_000


def _dicts(rows: Iterable[Any]) -> list[Any]:
    """Rows as plain JSON values (a fast-path block holds msgspec Structs), for dead letters."""
    return [row if isinstance(row, dict) else msgspec.to_builtins(row) for row in rows]


class _Fanout:
    """One delivery to several destinations: a run per destination over the same rows, read
    (by the leader, the first destination) and validated once."""

    def __init__(self, runs: dict[str, _Run]) -> None:
        self.runs = runs
        self.leader = next(iter(runs.values()))
        self.followers = [run for run in runs.values() if run is not self.leader]
        for run in self.followers:
            run.follow(self.leader)
        #: The transient failure that stopped each destination that stopped.
        self.causes: dict[str, TransientError] = {}
        self.source_error: Exception | None = None
        self.on_progress: Callable[[int, PushResult], None] | None = None
        self.on_positions: Callable[[Mapping[str, int]], None] | None = None
        #: A big file's rows: the Eventhouse takes them by queued ingestion.
        self.bulk = False
        self.store: Callable[[], None] = lambda: None
        self._positions = dict.fromkeys(runs, 0)
        self._reported = 0

    def reject(self, problem: RowProblem, row: Any, error: PushError | None = None) -> None:
        """A row refused before any destination: one dead letter (naming none), counted as
        rejected by every destination."""
        self.leader.reject(problem, row, error, shared=True)
        for run in self.followers:
            run.note(problem)

    def passed(self, destination: str, position: int) -> None:
        """``destination`` has acknowledged or refused every row before ``position``; the
        caller's progress moves when every destination has (a checkpoint is the least)."""
        if position <= self._positions[destination]:
            return
        self._positions[destination] = position
        if self.on_positions is not None:
            self.store()  # dead letters first, as for on_progress
            self.on_positions(dict(self._positions))
        low = min(self._positions.values())
        if low > self._reported and self.on_progress is not None:
            self._reported = low
            self.store()  # dead letters first: a checkpoint never passes a row not yet kept
            self.on_progress(low, self.leader.results[0])

    def stop_all(self, cause: TransientError | None, reason: str | None = None) -> None:
        """The end: each destination's result says whether (and why) it stopped."""
        for run in self.followers:
            run.received_from(self.leader)
        for name, run in self.runs.items():
            own = self.causes.get(name)
            if own is not None:
                run.stop(own)
            elif cause is not None or reason is not None:
                run.stop(cause, reason)
            run.resume_at(self._positions[name])

    def results(self) -> list[PushResult]:
        """Per part: the leader's result, with every destination's under ``destinations``."""
        tops = self.leader.results
        for number, top in enumerate(tops):
            top.destinations = {name: run.results[number] for name, run in self.runs.items()}
        return tops


@dataclass
class _ChunkOutcome:
    """What delivering one Eventhouse chunk came to (on the sink's worker): the failure, if
    any, and at which step; the retries and pacing waits, accounted on the reading thread."""

    error: PushError | None = None
    preparing: bool = False  # the failure came while making the table ready
    retries: int = 0
    waited: float = 0.0
    #: The client's outcome of the ingestion that was accepted (IngestOutcome).
    accepted: Any = None


#: The threads that deliver Eventhouse chunks while the reading thread goes on (validating,
#: packing, Power BI's POSTs): each push has at most one chunk in flight, and KustoPacing caps
#: the calls per process, so a few threads serve every concurrent push.
_EVENTHOUSE_WORKERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="eventhouse")


class _EventhouseSink:
    """The Eventhouse side of a :class:`_Fanout`: valid rows in chunks of
    :data:`EVENTHOUSE_CHUNK_ROWS`, the table and mapping made ready once, each chunk ingested
    through the retry policy and the Eventhouse's own pacing.

    A full chunk is delivered on a worker thread while the reading thread goes on, so the
    Eventhouse's round trips overlap Power BI's instead of adding to them (bench figure 8:
    one after the other, both destinations ran at 0.43x Power BI alone). One chunk is in
    flight at a time and its outcome is accounted on the reading thread before the next is
    sent, so chunks are acknowledged in order (positions, ``resume_from``) and every counter
    and dead letter is written by one thread."""

    def __init__(
        self,
        ingestor: Ingestor,
        run: _Run,
        fan: _Fanout,
        definition: DatasetDefinition,
        deadline: Deadline | None,
    ) -> None:
        routing = ingestor.routing.get(run.target.dataset)
        assert isinstance(routing, Routing) and routing.eventhouse is not None  # destinations_of
        assert ingestor.eventhouse is not None
        self.ingestor = ingestor
        self.client: TableStore = ingestor.eventhouse
        self.route: EventhouseRoute = routing.eventhouse
        self.run = run
        self.fan = fan
        self.definition = definition
        self.deadline = deadline
        self.table = self.route.table(run.target.table)
        self.indices: list[int] = []
        self.rows: list[Any] = []
        self.failed: PushError | None = None
        self.ready = False
        self._flight: tuple[Future[_ChunkOutcome], list[int], list[Any]] | None = None

    @property
    def stopped(self) -> bool:
        return EVENTHOUSE in self.fan.causes

    def accept(self, block: Block) -> None:
        """Take a block of valid rows; send every full chunk (one in flight)."""
        if self.failed is not None:
            self._refuse(block.indices, block.rows, self.failed)
            return
        if self.stopped:
            return  # its rows stay unsent
        self.indices.extend(block.indices)
        self.rows.extend(block.rows)
        while len(self.indices) >= EVENTHOUSE_CHUNK_ROWS and self.failed is None:
            self.settle()  # the chunk before first: in order, and it may stop or fail this one
            if self.stopped or self.failed is not None:
                break
            indices, rows = self._take(EVENTHOUSE_CHUNK_ROWS)
            future = _EVENTHOUSE_WORKERS.submit(self._deliver, indices, rows)
            self._flight = (future, indices, rows)

    def finish(self) -> None:
        """Send what is left (on this thread: nothing else is left to overlap it)."""
        self.settle()
        while self.indices and self.failed is None and not self.stopped:
            indices, rows = self._take(len(self.indices))
            self._account(self._deliver(indices, rows), indices, rows)

    def settle(self) -> None:
        """Wait for the chunk in flight, if any, and account for it."""
        if self._flight is not None:
            future, indices, rows = self._flight
            self._flight = None
            self._account(future.result(), indices, rows)

    def _take(self, count: int) -> tuple[list[int], list[Any]]:
        indices, rows = self.indices[:count], self.rows[:count]
        del self.indices[:count], self.rows[:count]
        return indices, rows

    def _refuse(self, indices: Sequence[int], rows: Sequence[Any], error: PushError) -> None:
        if indices:
            self.run.reject_all(zip(indices, _dicts(rows), strict=True), error, shared=False)
            self.fan.passed(EVENTHOUSE, indices[-1] + 1)

    def _deliver(self, indices: list[int], rows: list[Any]) -> _ChunkOutcome:
        """Make the table ready (once) and ingest one chunk: the network part, on a worker.
        Touches no result: what happened is returned for :meth:`_account`."""
        ingestor = self.ingestor
        pacing = ingestor.eventhouse_pacing
        label = f"{self.route.database}.{self.table}"
        outcome = _ChunkOutcome()

        def on_retry(error: PushError, wait: float) -> None:
            outcome.retries += 1
            log.warning("eventhouse %s: %s; retrying in %.1f s", label, error, wait)

        def attempt() -> None:
            with pacing.slot(self.deadline) as waited:
                outcome.waited += waited
                outcome.accepted = self.client.ingest(
                    self.table, rows, self.route.database, queued=self.fan.bulk
                )

        if not self.ready:
            try:
                # Idempotent commands (.create-merge, .create-or-alter): safe to re-send.
                ingestor.retry.run(
                    lambda: self.client.ensure_table(
                        self.definition,
                        self.run.target.table,
                        database=self.route.database,
                        name=self.table,
                    ),
                    idempotent=True,
                    deadline=self.deadline,
                    sleep=ingestor._sleep,
                    pause=pacing.pause,
                )
            except PushError as error:
                outcome.error, outcome.preparing = error, True
                return outcome
            self.ready = True  # one chunk in flight at a time: no other thread reads it now
        try:
            ingestor.retry.run(
                attempt,
                idempotent=False,
                deadline=self.deadline,
                sleep=ingestor._sleep,
                on_retry=on_retry,
                pause=pacing.pause,
            )
        except PushError as error:
            outcome.error = error
        return outcome

    def _account(self, outcome: _ChunkOutcome, indices: list[int], rows: list[Any]) -> None:
        """A chunk's outcome in the run's results and dead letters (the reading thread)."""
        batch = Batch(b"", tuple(indices), tuple(rows))
        for _ in range(outcome.retries):
            self.run.retried(batch)
        if outcome.waited:
            self.run.waited(batch, outcome.waited)
        error = outcome.error
        if error is None:
            self.run.acknowledged(batch)
            self.fan.passed(EVENTHOUSE, indices[-1] + 1)
            if getattr(outcome.accepted, "method", None) == "queued":
                # Accepted by Kusto's queue, stored later: a failure after this is Kusto's to
                # report (.show ingestion failures, the failed-ingestions queue), by this id.
                log.info(
                    "eventhouse %s.%s: %d rows queued for ingestion (source id %s)",
                    self.route.database,
                    self.table,
                    len(indices),
                    getattr(outcome.accepted, "source_id", "?"),
                )
        elif isinstance(error, TransientError):
            if not outcome.preparing and not stored_nothing(error):
                self.run.unconfirmed(batch)
            # As for Power BI: delivery to this destination stops; the rest stay unsent.
            self.fan.causes[EVENTHOUSE] = error
            self.indices.clear()
            self.rows.clear()
        elif isinstance(error, ValidationError) and not outcome.preparing:
            # The cluster refused this chunk's rows (a 400): they are dead-lettered naming
            # the Eventhouse and the reason; the next chunks still go. Kusto names no row (a
            # value that does not fit a column is stored as null), so the chunk is not split.
            self._refuse(indices, rows, error)
        else:
            self._fail(error, indices, rows)

    def _fail(self, error: PushError, indices: list[int], rows: list[Any]) -> None:
        """The table or the identity is unusable: this chunk and every row after it are
        dead-lettered with the reason."""
        self.failed = error
        self.run.fail(error)
        self._refuse(indices + self.indices, rows + self.rows, error)
        self.indices.clear()
        self.rows.clear()


def _plain(row: Any, index: int) -> dict[str, Any] | RowProblem:
    """Without a schema the service checks values; a row must still be a JSON object."""
    if isinstance(row, dict):
        return row
    return RowProblem(index, "a row must be a JSON object")


def _schema_from_service(name: str, table: dict[str, Any]) -> TableSchema | None:
    """The schema Get Tables reported, when it reported columns with known types."""
    columns = []
    for column in table.get("columns") or []:
        data_type = canonical_type(column.get("dataType"))
        if data_type is None or not isinstance(column.get("name"), str):
            return None
        columns.append(Column(column["name"], data_type))
    return TableSchema(name, tuple(columns)) if columns else None
