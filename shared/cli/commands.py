"""Command line for operators: ``python -m shared COMMAND ...`` (see ``--help``).

The seed's steps and a few chores, through the same settings, auth and engine as the functions:
``groups``, ``datasets``, ``provision FILE``, ``push FILE``, ``infer FILE``, ``delete-rows``,
``doctor`` (what stops a push: :mod:`shared.cli.doctor`), ``grant`` (the workspace role, as
its Admin: :mod:`shared.cli.grant`) and ``migrate`` (a dataset's tables into the Eventhouse and
routed there: :mod:`shared.cli.migrate`).
Settings come from the environment, completed by the ``Values`` of ``local.settings.json`` when
it exists, as the Functions host completes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from shared import limits
from shared.cli import doctor, grant, infer, migrate
from shared.cli.replay import BLOB_POISON_QUEUE, replay_dead_letters, replay_poison
from shared.contracts import PushResult, Target
from shared.destinations.powerbi import PowerBIClient
from shared.engine.ingest import PushIncomplete
from shared.engine.profile import ProfileError, TableProfile, parse_override
from shared.engine.schema import DatasetDefinition
from shared.errors import ConfigError, PushError
from shared.runtime import build_ingestor, build_queue_ingest
from shared.settings import Settings
from shared.sources.formats import FormatError, detect, read_rows
from shared.stores.deadletter import BlobDeadLetterStore
from shared.stores.storage import queue_client

#: The blob trigger's function name (functions/blob.py), as its poison messages name it.
BLOB_FUNCTION = "ingest_blob"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared", description="Push rows into Power BI push datasets."
    )
    parser.add_argument(
        "--settings",
        default="local.settings.json",
        help="a local.settings.json whose Values fill in unset environment variables",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("groups", help="list the workspaces this identity can see")
    datasets = commands.add_parser("datasets", help="list the datasets of a workspace")
    datasets.add_argument("--workspace", help="name or id (default: the configured one)")
    provision = commands.add_parser("provision", help="create a dataset from its definition")
    provision.add_argument("file", type=Path, help="a Create Dataset JSON, e.g. datasets/X.json")
    provision.add_argument("--workspace")
    push = commands.add_parser(
        "push", help="push a CSV, NDJSON or JSON file's rows (gzip too) to a table"
    )
    push.add_argument(
        "file", type=Path, help='.csv, .ndjson/.jsonl or .json (array or {"rows": [...]}), .gz'
    )
    push.add_argument("--dataset", required=True, help="name or id")
    push.add_argument("--table", required=True)
    push.add_argument("--workspace")
    push.add_argument(
        "--profile",
        help="an ingest profile override for this file: a JSON object, or a file holding one "
        "(applied over the table's entry in DATASETS_DIR/<dataset>.profile.json)",
    )
    replay = commands.add_parser(
        "replay", help="re-drive dead letters or poison messages once the cause is fixed"
    )
    replay.add_argument("what", choices=["deadletters", "poison"])
    replay.add_argument("--prefix", help="deadletters: only blobs under this name prefix")
    replay.add_argument("--queue", help="poison: the rows queue (default ROWS_QUEUE)")
    infer = commands.add_parser(
        "infer", help="a dataset definition and ingest profile for a CSV, NDJSON or JSON file"
    )
    infer.add_argument("file", type=Path, help="the file (gzip too); its first MiB is read")
    infer.add_argument("--dataset", required=True, help="the dataset's name")
    infer.add_argument("--table", required=True, help="the table's name")
    infer.add_argument(
        "--out",
        type=Path,
        help="write <dataset>.json and <dataset>.profile.json here (DATASETS_DIR), adding the "
        "table to an existing definition; without it, print them",
    )
    check = commands.add_parser(
        "doctor",
        help="check settings, identity, tenant setting, workspace role, datasets and storage",
        description="With the app's own settings and identity: what would stop a push, each "
        "failure with its cause and fix. Exit 0 only when every check passes.",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    grant.add_parser(commands)
    migrate.add_parser(commands)
    delete = commands.add_parser("delete-rows", help="delete every row of a table")
    delete.add_argument("--dataset", required=True)
    delete.add_argument("--table", required=True)
    delete.add_argument("--workspace")
    return parser


def load_environment(path: Path) -> dict[str, str]:
    """The process environment, completed (never overridden) by ``path``'s ``Values``, as the
    Functions host reads ``local.settings.json``.

    The values are also put into ``os.environ``, as the host does for its worker: libraries
    read their settings from there, not from this dict (azure-identity finds the managed
    identity endpoint in ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``), so a value given only in
    the file would otherwise be ignored by them.
    """
    env = dict(os.environ)
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(str(path), f"cannot read it: {exc}") from exc
        for key, value in values.items():
            if str(value).strip():
                env.setdefault(key, str(value))
                os.environ.setdefault(key, str(value))
    return env


#: How much of a file the command line reads at a time (as the blob path reads a blob).
CHUNK_BYTES = 1024 * 1024


class FileReader:
    """A CSV, NDJSON or JSON file (gzip too, by its name or its first bytes), read in chunks
    through the blob path's readers (:func:`shared.sources.formats.read_rows`): unreadable
    lines become dead letters with their line number, as for an uploaded file. Counts the
    bytes read, for progress."""

    def __init__(self, path: Path) -> None:
        try:
            self.kind, self.gzipped = detect(path.name)
        except FormatError as exc:
            raise ConfigError(str(path), str(exc)) from None
        try:
            self.size = path.stat().st_size
            self._handle = path.open("rb")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read it: {exc.strerror or exc}") from None
        self.path = path
        self.read_bytes = 0

    def _chunks(self) -> Iterator[bytes]:
        with self._handle:
            while chunk := self._handle.read(CHUNK_BYTES):
                self.read_bytes += len(chunk)
                yield chunk

    def rows(self, profile: TableProfile | None = None) -> Iterator[Any]:
        """The file's rows (and :class:`~shared.contracts.Unreadable` items), lazily, read
        under the table's ``profile``."""
        return read_rows(self._chunks(), self.kind, self.gzipped, profile=profile)


class Progress:
    """One line on a terminal, rewritten after each acknowledged Add Rows: rows sent, rows a
    second, how much of the file is read, and the time left at the pace so far or at the
    quota's pace (1,000,000 rows an hour per dataset), whichever is slower. Silent when its
    stream is not a terminal (a pipe, a log file, CI)."""

    def __init__(
        self,
        reader: FileReader,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.enabled = stream.isatty()
        self.shown = False

    def __call__(self, rows_done: int, result: PushResult) -> None:
        if not self.enabled:
            return
        self.stream.write("\r" + self.line(rows_done, result.sent, result.rejected) + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def line(self, rows_done: int, sent: int, rejected: int) -> str:
        """The progress line after ``rows_done`` rows, ``sent`` of them acknowledged and
        ``rejected`` dead-lettered (or listed)."""
        elapsed = max(self.clock() - self.started, 1e-6)
        fraction = self.reader.read_bytes / self.reader.size if self.reader.size else 1.0
        text = (
            f"{rows_done:,} rows done ({sent:,} sent, {rejected:,} rejected), "
            f"{rows_done / elapsed:,.0f} rows/s, {fraction:.0%} of the file read"
        )
        if 0 < fraction < 1:
            left_rows = rows_done * (1 - fraction) / fraction
            at_pace = elapsed * (1 - fraction) / fraction
            at_quota = left_rows / limits.MAX_ROWS_PER_HOUR * 3600
            text += f", about {_duration(max(at_pace, at_quota))} left"
        return text

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h{minute:02d}m" if hours else f"{minute}m{second:02d}s"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "infer":
        return _infer(args)  # reads a file only: no settings, no identity
    if args.command == "doctor":
        return doctor.run(
            lambda: load_environment(Path(args.settings)), as_json=args.json, stream=sys.stdout
        )
    if args.command in ("grant", "migrate"):
        try:
            env = load_environment(Path(args.settings))
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        if args.command == "grant":
            return grant.run(args, env)  # the operator's identity, not the app's
        # The Eventhouse only: no Power BI client, token or workspace is needed.
        return migrate.run(args, env, stdout=sys.stdout, stderr=sys.stderr)
    try:
        env = load_environment(Path(args.settings))
        settings = Settings.from_env(env)
        with_store = bool(
            env.get(settings.deadletter_connection)
            or env.get(f"{settings.deadletter_connection}__blobServiceUri")
        )
        # The operator may target any dataset the identity reaches: no ALLOWED_TARGETS here.
        ingestor = build_ingestor(settings, env, dead_letters=with_store, callers=False)
        client = ingestor.client
        assert isinstance(client, PowerBIClient)  # what build_ingestor makes
        workspace = getattr(args, "workspace", None) or ingestor.default_workspace
        if args.command == "groups":
            _print([{"id": g["id"], "name": g.get("name")} for g in client.get_groups()])
        elif args.command == "datasets":
            workspace_id = ingestor.workspace_id(workspace)
            _print(
                [{"id": d["id"], "name": d.get("name")} for d in client.get_datasets(workspace_id)]
            )
        elif args.command == "provision":
            body = json.loads(args.file.read_text(encoding="utf-8"))
            definition = DatasetDefinition.from_body(body, str(args.file))
            resolved = ingestor.provision(definition, workspace)
            _print(
                {"id": resolved.dataset_id, "name": definition.name, "created": resolved.created}
            )
        elif args.command == "push":
            if not with_store:
                print(
                    f"note: {settings.deadletter_connection} is not set, so rejected rows are "
                    "listed here but not dead-lettered",
                    file=sys.stderr,
                )
            target = Target(args.dataset, args.table, workspace)
            reader = FileReader(args.file)
            # Checked before any row moves: a bad profile is exit 2, nothing sent.
            profile = ingestor.profile(target, _override(args.profile), "--profile")
            progress = Progress(reader, sys.stderr)
            try:
                result = ingestor.push(
                    target,
                    reader.rows(profile),
                    source=str(args.file),
                    on_progress=progress,
                    profile=profile,
                )
            finally:
                progress.close()
            _print(result.to_json())
            return 0 if result.rejected == 0 else 1
        elif args.command == "replay":
            if args.what == "deadletters":
                if not isinstance(ingestor.dead_letters, BlobDeadLetterStore):
                    raise ConfigError(settings.deadletter_connection, "is needed to replay")
                report = replay_dead_letters(ingestor.dead_letters.container, ingestor, args.prefix)
            else:
                handler = build_queue_ingest(settings, ingestor, env)
                queue = f"{args.queue or settings.rows_queue}-poison"
                report = replay_poison(
                    queue_client(settings.storage_connection, queue, env), handler
                )
                if report.stopped is None:
                    blobs = queue_client(settings.storage_connection, BLOB_POISON_QUEUE, env)
                    more = replay_poison(
                        blobs,
                        handler,
                        blob_function=BLOB_FUNCTION,
                        blob_container=settings.ingest_container,
                    )
                    report.messages_replayed += more.messages_replayed
                    report.rows_sent += more.rows_sent
                    report.rows_rejected_again += more.rows_rejected_again
                    report.stopped = more.stopped
            _print(report.to_json())
            return 0 if report.stopped is None else 3
        elif args.command == "delete-rows":
            resolved = ingestor.resolve(Target(args.dataset, args.table, workspace))
            client.delete_rows(resolved.dataset_id, args.table, resolved.workspace_id)
            _print({"deleted": f"{args.dataset}/{args.table}"})
    except PushIncomplete as exc:
        _print(exc.result.to_json())
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ProfileError as exc:
        print(f"profile error: {exc}", file=sys.stderr)
        return 2
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _override(value: str | None) -> dict[str, Any] | None:
    """``--profile``: a JSON object, or the path of a file holding one."""
    if value is None:
        return None
    path = Path(value)
    if not value.lstrip().startswith("{") and path.is_file():
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(str(path), "(file)", f"cannot be read: {exc}") from None
    return parse_override(value, "--profile")


def _infer(args: argparse.Namespace) -> int:
    """``infer``: print (or write) a definition and profile; 2 when the file cannot be read."""
    try:
        sample, truncated = infer.read_sample(args.file)
        found = infer.infer(sample, args.file.name, args.dataset, args.table, truncated=truncated)
        if args.out is not None:
            definition, profile = infer.write(found, args.out)
            print(f"wrote {definition} and {profile}", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    _print(infer.report(found))
    return 0


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
