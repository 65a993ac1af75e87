"""A small local Functions host: runs ``function_app.py``'s own bindings, for dev and tests only.

Azure Functions Core Tools (``func start``) cannot be installed here, so this module plays the
host's part for the bindings this app uses, reading them from the function metadata the Python
worker would send the real host (``app.get_functions()`` -> ``get_function_json()``), never from
a hard-coded list:

- **HTTP triggers** are served with aiohttp at ``http://<host>:<port>/<routePrefix>/<route>``
  (``routePrefix`` from ``host.json``, default ``api``), with the binding's methods. Route
  parameters ``{name}`` become ``req.route_params``; ``{name:int}``-style constraints,
  ``{*rest}`` catch-alls and a trailing optional ``{name?}`` are understood. Unlike the real host,
  route matching is case-sensitive.
- **Function keys are NOT enforced**, whatever ``authLevel`` says: that is what ``func start``
  does locally too. Do not expose this host beyond loopback.
- Each invocation gets a real ``func.HttpRequest``, one :class:`OutValue` (``func.Out``) per
  output binding, and runs the user function by binding name on a thread pool, as the Python
  worker runs sync functions (size: ``PYTHON_THREADPOOL_THREAD_COUNT``, default 8); ``async def``
  functions run on the event loop. The returned ``func.HttpResponse`` becomes the HTTP answer.
  An exception escaping the function is logged with its traceback and answered with a 500 and
  a short generic JSON body (the real host answers 500 too); the host keeps running.
- **Queue output bindings**: after the function returns, every queue ``Out`` that was set (a
  str, bytes, ``func.QueueMessage`` or a list of them) is sent with ``azure-storage-queue``,
  base64-encoded as the Functions host does by default (``host.json``
  ``extensions.queues.messageEncoding``: ``base64`` or ``none``). ``%SETTING%`` in ``queueName``
  is resolved from the app settings, ``connection`` names the setting that holds the connection
  string (``UseDevelopmentStorage=true`` means Azurite's default ports), and the queue is
  created when missing. Nothing is sent when the function raises.
- As with the real host, a binding that cannot work (an unresolvable ``%SETTING%``, a missing
  connection setting, a binding type devhost does not implement) puts that function "in error"
  at startup; the other functions still run. Trigger types without a runner are listed as "not
  run by devhost". Runners are looked up in :data:`TRIGGER_RUNNERS` and output senders in
  :data:`OUTPUT_HANDLERS` by binding type, so queue and blob triggers can be added there.
- ``AzureWebJobs.<name>.Disabled=true`` disables a function, as in ``local.settings.json``.
- **Queue triggers** poll Azurite as the host does (batches, back-off, dequeue count,
  ``<queue>-poison``; see :class:`QueueRunner`). **Blob triggers** list the container and run
  each blob version once, recorded in a receipt blob in ``azure-webjobs-hosts`` that is leased
  while the version runs, as the real host leases its receipts: several devhost processes on
  one storage account share the blobs the way scaled-out instances do, each version run by one
  of them, and a version whose holder died is taken over when its lease expires (30 s,
  ``DEVHOST_BLOB_LEASE_SECONDS``). Failed tries are counted in the receipt, across processes,
  up to ``maxDequeueCount`` (see :class:`BlobRunner`).
- ``GET /admin/devhost/activity`` (devhost only) counts what the host has done: container
  scans, queue polls, blob versions found done, blob versions skipped because another process
  holds their lease, invocations started and finished. Tests that must show something did not
  happen wait on these (see :class:`Activity`) instead of sleeping.

App settings come from ``local.settings.json``'s ``Values`` (see :func:`load_settings`); they
never override a variable already set in the environment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import importlib
import inspect
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import azure.functions as func
import azure.functions.queue as func_queue
from aiohttp import web
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient
from azure.storage.queue import (
    BinaryBase64EncodePolicy,
    QueueClient,
    TextBase64EncodePolicy,
)
from multidict import CIMultiDict

from shared.stores.storage import expand_connection_string

log = logging.getLogger("devhost")

#: Settings files tried in the app directory when none is given.
SETTINGS_FILES = ("local.settings.json", "local.settings.example.json")
DEFAULT_PORT = 7071
DEFAULT_THREAD_COUNT = 8
#: The host's own request limit (``maxAllowedContentLength`` in its web.config).
MAX_REQUEST_BYTES = 210_000_000
DEFAULT_CONNECTION = "AzureWebJobsStorage"


class DevhostError(Exception):
    """The host cannot start: a bad settings file, an app that does not import, a busy port."""


class BindingError(Exception):
    """A binding this host cannot serve; the function is reported "in error" at startup."""


# -- settings and host.json ----------------------------------------------------------------------


def find_settings_file(app_dir: Path, explicit: str | None = None) -> Path | None:
    """``explicit`` if given (it must exist), else the first of :data:`SETTINGS_FILES`."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DevhostError(f"settings file {path} does not exist")
        return path
    for name in SETTINGS_FILES:
        if (app_dir / name).is_file():
            return app_dir / name
    return None


def load_settings(path: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Copy the file's ``Values`` into the environment without overriding what is already set.

    Returns the whole parsed file (its ``Host`` section may hold ``LocalHttpPort``).
    """
    env = os.environ if environ is None else environ
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise DevhostError(f"cannot read settings file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise DevhostError(f"{path}: expected a JSON object with a Values section")
    if document.get("IsEncrypted"):
        raise DevhostError(
            f"{path} has IsEncrypted: true; devhost reads plain values only "
            "(decrypt it with `func settings decrypt`, or pass another file with --settings)"
        )
    values = document.get("Values") or {}
    if not isinstance(values, dict):
        raise DevhostError(f"{path}: Values must be an object of setting names to strings")
    for name, value in values.items():
        if name not in env:
            env[name] = _setting_text(value)
    return document


def _setting_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class HostConfig:
    """The parts of ``host.json`` this host honours."""

    route_prefix: str = "api"
    queue_message_encoding: str = "base64"
    # extensions.queues, with the host's defaults (functions-bindings-storage-queue#host-json;
    # maxPollingInterval defaults to 2 s when running locally).
    queue_batch_size: int = 16
    queue_new_batch_threshold: int = 8
    queue_max_dequeue_count: int = 5
    queue_visibility_timeout: float = 0.0
    queue_max_polling_interval: float = 2.0

    @classmethod
    def load(cls, app_dir: Path, env: Mapping[str, str] | None = None) -> HostConfig:
        """Read ``host.json``, with ``AzureFunctionsJobHost__a__b`` app settings overriding
        ``a.b`` as the host allows (functions-host-json, "Override host.json values")."""
        path = app_dir / "host.json"
        document: dict[str, Any] = {}
        if path.is_file():
            try:
                document = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as exc:
                raise DevhostError(f"cannot read {path}: {exc}") from exc
        prefix = "azurefunctionsjobhost__"
        for name, value in (os.environ if env is None else env).items():
            if name.lower().startswith(prefix):
                keys = name[len(prefix) :].split("__")
                node = document
                for key in keys[:-1]:
                    node = node.setdefault(key, {})
                node[keys[-1]] = value
        extensions = document.get("extensions") or {}
        http = extensions.get("http") or {}
        queues = extensions.get("queues") or {}
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise DevhostError(f"{path}: extensions.queues.messageEncoding must be base64 or none")
        batch = int(queues.get("batchSize", 16))
        if not 1 <= batch <= 32:
            raise DevhostError(f"{path}: extensions.queues.batchSize must be 1 to 32")
        return cls(
            route_prefix=str(http.get("routePrefix", "api")).strip("/"),
            queue_message_encoding=encoding,
            queue_batch_size=batch,
            queue_new_batch_threshold=int(queues.get("newBatchThreshold", batch // 2)),
            queue_max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            queue_visibility_timeout=timespan(queues.get("visibilityTimeout", "00:00:00")),
            queue_max_polling_interval=timespan(queues.get("maxPollingInterval", "00:00:02")),
        )


def timespan(value: object) -> float:
    """Seconds in a host.json TimeSpan such as ``00:00:30`` or ``00:00:00.100``."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", str(value).strip())
    if match is None:
        raise DevhostError(f"host.json: {value!r} is not a TimeSpan like 00:00:30")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86_400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def resolve_setting_names(text: str, env: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` with app setting NAME, as binding expressions do."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        value = env.get(name, "")
        if not value:
            raise BindingError(f"'%{name}%' does not resolve to a value (set app setting {name})")
        return value

    return re.sub(r"%([^%]+)%", replace, text)


# -- the app and its metadata --------------------------------------------------------------------


def load_app(module_name: str, app_dir: Path) -> func.FunctionRegister:
    """Import the script (``function_app``) and return its one top-level ``FunctionApp``."""
    name = module_name.removesuffix(".py")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        traceback.print_exc()
        raise DevhostError(f"importing {name} failed (traceback above)") from exc
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if not apps:
        raise DevhostError(f"Could not find top level function app instances in {name}")
    if len(apps) > 1:
        raise DevhostError(f"More than one top level function app instances are defined in {name}")
    return apps[0]


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the host sees it: its name, its user function and its bindings."""

    name: str
    function: Callable[..., Any]
    trigger: Mapping[str, Any]
    #: Every binding except the trigger, as in function.json.
    bindings: tuple[Mapping[str, Any], ...]

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def outputs(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(b for b in self.bindings if str(b.get("direction", "")).upper() == "OUT")

    @property
    def inputs(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(b for b in self.bindings if str(b.get("direction", "")).upper() != "OUT")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


def function_specs(app: func.FunctionRegister) -> list[FunctionSpec]:
    """The app's functions, read from the same metadata the worker sends the host."""
    specs: list[FunctionSpec] = []
    for function in app.get_functions():
        bindings: list[dict[str, Any]] = json.loads(function.get_function_json())["bindings"]
        declared = function.get_trigger()
        if declared is None:  # the library refuses this when indexing; keep mypy honest
            raise DevhostError(f"function {function.get_function_name()} has no trigger")
        trigger_name = declared.name
        trigger = next(b for b in bindings if b["name"] == trigger_name)
        specs.append(
            FunctionSpec(
                name=str(function.get_function_name()),
                function=function.get_user_function(),
                trigger=trigger,
                bindings=tuple(b for b in bindings if b is not trigger),
            )
        )
    return specs


# -- output bindings -----------------------------------------------------------------------------


class OutValue(func.Out[Any]):
    """An output binding's value, as the worker passes it: ``set()`` it, ``get()`` it back."""

    def __init__(self) -> None:
        self._value: Any = None
        self.is_set = False

    def set(self, val: Any) -> None:
        self._value = val
        self.is_set = True

    def get(self) -> Any:
        return self._value


class OutputHandler(Protocol):
    """Sends what a function set on one type of output binding (runs on a worker thread)."""

    def check(self, binding: Mapping[str, Any], env: Mapping[str, str]) -> None:
        """Raise :class:`BindingError` at startup if the binding cannot work."""

    def send(self, binding: Mapping[str, Any], value: Any, env: Mapping[str, str]) -> None:
        """Deliver ``value``; an exception fails the invocation."""


def connection_string(binding: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The storage connection string named by the binding's ``connection`` setting."""
    name = str(binding.get("connection") or DEFAULT_CONNECTION)
    for candidate in (name, f"AzureWebJobs{name}"):
        value = env.get(candidate, "").strip()
        if value:
            return expand_connection_string(value)
    if any(f"{name}__{suffix}" in env for suffix in ("queueServiceUri", "serviceUri")):
        raise BindingError(
            f"connection {name!r} is identity-based; devhost supports connection strings only"
        )
    raise BindingError(
        f"Storage account connection string '{name}' does not exist. "
        "Make sure that it is a defined App Setting."
    )


def queue_messages(value: Any, binding_name: str) -> list[str | bytes]:
    """The messages an output value stands for: one per str/bytes/QueueMessage (or list item)."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    messages: list[str | bytes] = []
    for item in items:
        if isinstance(item, str | bytes):
            messages.append(item)
        elif isinstance(item, func.QueueMessage):
            messages.append(item.get_body())
        else:
            raise TypeError(
                f"queue output {binding_name!r} was set to {type(item).__name__}: set a str, "
                "bytes, func.QueueMessage, or a list of them"
            )
    return messages


class QueueOutput:
    """Queue output bindings, sent with azure-storage-queue the way the host encodes them."""

    def __init__(self, config: HostConfig) -> None:
        self._base64 = config.queue_message_encoding == "base64"
        self._clients: dict[tuple[str, str, bool], QueueClient] = {}
        self._created: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def check(self, binding: Mapping[str, Any], env: Mapping[str, str]) -> None:
        resolve_setting_names(str(binding.get("queueName", "")), env)
        connection_string(binding, env)

    def send(self, binding: Mapping[str, Any], value: Any, env: Mapping[str, str]) -> None:
        messages = queue_messages(value, str(binding["name"]))
        if not messages:
            return
        queue = resolve_setting_names(str(binding["queueName"]), env)
        connection = connection_string(binding, env)
        for message in messages:
            binary = isinstance(message, bytes) and self._base64
            content: str | bytes = message
            if isinstance(message, bytes) and not self._base64:
                content = message.decode("utf-8")
            self._client(connection, queue, binary).send_message(content)

    def _client(self, connection: str, queue: str, binary: bool) -> QueueClient:
        with self._lock:
            client = self._clients.get((connection, queue, binary))
            if client is None:
                policy: TextBase64EncodePolicy | BinaryBase64EncodePolicy | None = None
                if self._base64:
                    policy = BinaryBase64EncodePolicy() if binary else TextBase64EncodePolicy()
                client = QueueClient.from_connection_string(
                    connection, queue, message_encode_policy=policy
                )
                self._clients[(connection, queue, binary)] = client
            if (connection, queue) not in self._created:
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                self._created.add((connection, queue))
            return client


#: Output binding type -> its sender. The ``http`` output is the HTTP trigger runner's answer.
OUTPUT_HANDLERS: dict[str, Callable[[HostConfig], OutputHandler]] = {"queue": QueueOutput}


# -- invocations ---------------------------------------------------------------------------------


@dataclass
class Invocation:
    """A finished invocation: its id, the return value and the output bindings' values."""

    id: str
    value: Any
    outs: dict[str, OutValue] = field(default_factory=dict)


class InvocationFailed(Exception):
    """The user function (or sending its outputs) raised; the traceback has been logged."""

    def __init__(self, function: str, invocation_id: str) -> None:
        super().__init__(f"Exception while executing function: Functions.{function}")
        self.function = function
        self.invocation_id = invocation_id


class TriggerRunner(Protocol):
    """Runs the functions of one trigger type (HTTP today; queue and blob can be added)."""

    def add(self, spec: FunctionSpec) -> None:
        """Take on a function; raise :class:`BindingError` if its trigger cannot be served."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def listing(self) -> list[str]:
        """One ``name: ...`` line per function, for the startup banner (after start)."""


def thread_count(env: Mapping[str, str]) -> int:
    raw = env.get("PYTHON_THREADPOOL_THREAD_COUNT", "").strip()
    if not raw:
        return DEFAULT_THREAD_COUNT
    try:
        count = int(raw)
    except ValueError:
        raise DevhostError("PYTHON_THREADPOOL_THREAD_COUNT must be a whole number") from None
    if count < 1:
        raise DevhostError("PYTHON_THREADPOOL_THREAD_COUNT must be at least 1")
    return count


ACTIVITY_PATH = "/admin/devhost/activity"


@dataclass
class Activity:
    """What the host has done so far, for tests that must show something did NOT happen: they
    wait until the host has done the work that would have made it happen (N more scans or
    polls, a version found done) instead of sleeping. Served as JSON at :data:`ACTIVITY_PATH`
    (``/admin`` is reserved for the host, as in the real one; no keys, no names of secrets)."""

    #: Completed listings of each blob trigger's container (every blob listed was looked at).
    blob_scans: Counter[str] = field(default_factory=Counter)
    #: Blob versions found already done (their receipt is complete), per container: never run
    #: again by this process.
    blob_receipts_found: Counter[str] = field(default_factory=Counter)
    #: Times a blob version was skipped because another holder (another devhost process) had
    #: its receipt's lease, per container: that process runs it; a later scan looks again.
    blob_leased_elsewhere: Counter[str] = field(default_factory=Counter)
    #: Completed receive calls on each trigger queue (whatever they returned).
    queue_polls: Counter[str] = field(default_factory=Counter)
    #: Invocations started and finished (succeeded or failed), per function.
    started: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """The counters, plus the invocations still running per function."""
        running = self.started - self.finished
        return {
            "pid": os.getpid(),
            "blobScans": dict(self.blob_scans),
            "blobReceiptsFound": dict(self.blob_receipts_found),
            "blobLeasedElsewhere": dict(self.blob_leased_elsewhere),
            "queuePolls": dict(self.queue_polls),
            "started": dict(self.started),
            "finished": dict(self.finished),
            "running": sum(running.values()),
        }


class Host:
    """The functions of one app, their trigger runners, output senders and worker thread pool."""

    def __init__(
        self,
        app: func.FunctionRegister,
        *,
        config: HostConfig | None = None,
        bind: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or HostConfig()
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.executor = ThreadPoolExecutor(
            max_workers=thread_count(self.env), thread_name_prefix="devhost-worker"
        )
        self.outputs: dict[str, OutputHandler] = {
            kind: make(self.config) for kind, make in OUTPUT_HANDLERS.items()
        }
        self.bind = bind
        self.port = port
        self.activity = Activity()
        self.runners: dict[str, TriggerRunner] = {
            kind: make_runner(self) for kind, make_runner in TRIGGER_RUNNERS.items()
        }
        http = self.runners["httpTrigger"]
        assert isinstance(http, HttpRunner)
        self.http = http  # the host's HTTP server: its URL is the host's URL
        self.http.app.router.add_get(ACTIVITY_PATH, self._activity)
        self.functions: list[FunctionSpec] = []
        self.not_run: list[tuple[str, str]] = []
        self.in_error: list[tuple[str, str]] = []
        self.disabled: list[str] = []
        for spec in function_specs(app):
            self._register(spec)

    def _register(self, spec: FunctionSpec) -> None:
        flag = self.env.get(f"AzureWebJobs.{spec.name}.Disabled", "")
        if flag.strip().lower() in ("true", "1"):
            self.disabled.append(spec.name)
            return
        runner = self.runners.get(spec.trigger_type)
        if runner is None:
            self.not_run.append((spec.name, spec.trigger_type))
            return
        try:
            self._check_bindings(spec)
            runner.add(spec)
        except BindingError as exc:
            self.in_error.append((spec.name, str(exc)))
            return
        self.functions.append(spec)

    def _check_bindings(self, spec: FunctionSpec) -> None:
        if spec.inputs:
            kind = spec.inputs[0]["type"]
            raise BindingError(f"input binding type {kind!r} is not run by devhost")
        for binding in spec.outputs:
            kind = str(binding["type"])
            if kind == "http":
                continue
            handler = self.outputs.get(kind)
            if handler is None:
                raise BindingError(f"output binding type {kind!r} is not run by devhost")
            handler.check(binding, self.env)
        bound = {str(spec.trigger["name"])} | {
            str(b["name"]) for b in spec.bindings if b["name"] != "$return"
        }
        parameters = set(inspect.signature(spec.function).parameters)
        if parameters - bound:
            raise BindingError(
                f"parameters without a binding: {', '.join(sorted(parameters - bound))} "
                "(devhost does not pass 'context')"
            )
        if bound - parameters:
            raise BindingError(
                f"bindings without a parameter: {', '.join(sorted(bound - parameters))}"
            )

    async def _activity(self, request: web.Request) -> web.Response:
        return web.json_response(self.activity.to_json())

    async def start(self) -> None:
        for runner in self.runners.values():
            await runner.start()

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def banner(self) -> list[str]:
        """What ``func start`` prints: the functions and their URLs, then what is not served."""
        lines = ["Functions:"]
        for runner in self.runners.values():
            lines += [f"  {line}" for line in runner.listing()]
        if not self.functions:
            lines.append("  (none)")
        lines.append(
            "Function keys are not enforced (authLevel is ignored locally, as with `func start`)."
        )
        if self.not_run:
            lines.append("Not run by devhost:")
            lines += [f"  {name}: {kind}" for name, kind in self.not_run]
        if self.disabled:
            lines.append("Disabled: " + ", ".join(self.disabled))
        if self.in_error:
            lines.append("Functions in error:")
            lines += [f"  {name}: {reason}" for name, reason in self.in_error]
        return lines

    async def invoke(
        self, spec: FunctionSpec, inputs: Mapping[str, Any], reason: str
    ) -> Invocation:
        """Run one invocation: outputs made, the function called, its outputs sent."""
        invocation_id = str(uuid.uuid4())
        outs = {str(b["name"]): OutValue() for b in spec.outputs if b["name"] != "$return"}
        kwargs: dict[str, Any] = {**inputs, **outs}
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self.activity.started[spec.name] += 1  # after its line: a log reader can catch up to it
        try:
            if spec.is_async:
                value = await spec.function(**kwargs)
                await loop.run_in_executor(self.executor, self._send_outputs, spec, value, outs)
            else:
                value = await loop.run_in_executor(self.executor, self._run, spec, kwargs, outs)
        except (Exception, SystemExit) as exc:
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)",
                spec.name,
                invocation_id,
                (time.monotonic() - started) * 1000,
                exc_info=exc,
            )
            self.activity.finished[spec.name] += 1  # counted after its line is logged
            raise InvocationFailed(spec.name, invocation_id) from exc
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            spec.name,
            invocation_id,
            (time.monotonic() - started) * 1000,
        )
        self.activity.finished[spec.name] += 1
        return Invocation(invocation_id, value, outs)

    def _run(self, spec: FunctionSpec, kwargs: dict[str, Any], outs: dict[str, OutValue]) -> Any:
        value = spec.function(**kwargs)
        self._send_outputs(spec, value, outs)
        return value

    def _send_outputs(self, spec: FunctionSpec, value: Any, outs: dict[str, OutValue]) -> None:
        for binding in spec.outputs:
            handler = self.outputs.get(str(binding["type"]))
            if handler is None:
                continue
            if binding["name"] == "$return":
                if value is not None:
                    handler.send(binding, value, self.env)
            elif outs[str(binding["name"])].is_set:
                handler.send(binding, outs[str(binding["name"])].get(), self.env)


# -- HTTP ----------------------------------------------------------------------------------------

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
}


def aiohttp_paths(prefix: str, route: str) -> list[str]:
    """aiohttp path patterns for a Functions route template (two when the last part is optional)."""
    segments = [s for s in f"{prefix.strip('/')}/{route.strip('/')}".split("/") if s]
    converted: list[str] = []
    optional_tail = False
    for index, segment in enumerate(segments):
        match = re.fullmatch(r"\{(\*{0,2})([^{}]+)\}", segment)
        if match is None:
            if "{" in segment or "}" in segment:
                # Parameters inside a segment ("file.{ext}"): keep the names, drop constraints.
                segment = re.sub(r"\{\**([^{}:=?]+)[^{}]*\}", r"{\1}", segment)
            converted.append(segment)
            continue
        catch_all, spec = match.group(1), match.group(2)
        optional = spec.endswith("?") or "=" in spec
        name, _, constraint = spec.rstrip("?").partition(":")
        name = name.partition("=")[0]
        kind = constraint.partition("(")[0].lower()
        pattern = ".*" if catch_all else _CONSTRAINTS.get(kind, "")
        converted.append(f"{{{name}:{pattern}}}" if pattern else f"{{{name}}}")
        optional_tail = index == len(segments) - 1 and (optional or bool(catch_all))
    paths = ["/" + "/".join(converted)]
    if optional_tail:
        paths.append("/" + "/".join(converted[:-1]))
    return paths


def to_aiohttp(answer: Any) -> web.Response:
    """The function's HTTP output as an aiohttp response (as the worker converts it)."""
    if answer is None:
        return web.Response(status=204)
    if isinstance(answer, str | bytes):
        answer = func.HttpResponse(answer)
    if not isinstance(answer, func.HttpResponse):
        raise TypeError(
            f"the HTTP output must be a func.HttpResponse, str or bytes, not "
            f"{type(answer).__name__}"
        )
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in answer.headers.items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            headers.add(name, value)
    if "Content-Type" not in headers:
        headers["Content-Type"] = f"{answer.mimetype}; charset={answer.charset}"
    return web.Response(status=answer.status_code, body=answer.get_body(), headers=headers)


def failure_response(failed: InvocationFailed) -> web.Response:
    """The 500 a failed invocation gets: generic, no exception text (that is in the log)."""
    body = {
        "error": {
            "code": "FunctionInvocationFailed",
            "message": str(failed),
            "invocationId": failed.invocation_id,
        }
    }
    return web.json_response(body, status=500)


@dataclass(frozen=True)
class HttpEntry:
    spec: FunctionSpec
    methods: tuple[str, ...]
    route: str


class HttpRunner:
    """HTTP triggers on one aiohttp server (it listens even when no function is routed)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.bind = host.bind
        self.requested_port = host.port
        self.port: int | None = None
        self.app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        self.entries: list[HttpEntry] = []
        self._taken: dict[str, set[str]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL callers use (a wildcard bind address is shown as loopback)."""
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.bind, self.bind)
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port if self.port is not None else self.requested_port}"

    def add(self, spec: FunctionSpec) -> None:
        route = str(spec.trigger.get("route") or spec.name)
        methods = tuple(str(m).upper() for m in spec.trigger.get("methods") or ())
        answers = [b for b in spec.outputs if b["type"] == "http"]
        if len(answers) != 1:
            raise BindingError("an HTTP trigger needs exactly one http output binding")
        output = str(answers[0]["name"])
        paths = aiohttp_paths(self.host.config.route_prefix, route)
        wanted = set(methods) or {"*"}
        for path in paths:
            taken = self._taken.get(path, set())
            if taken & wanted or (taken and "*" in wanted) or "*" in taken:
                raise BindingError(f"route {route!r} is already served for these methods")

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, spec, output)

        for path in paths:
            for method in methods or ("*",):
                self.app.router.add_route(method, path, handler)
            self._taken.setdefault(path, set()).update(wanted)
        self.entries.append(HttpEntry(spec, methods, route))

    async def _handle(
        self, request: web.Request, spec: FunctionSpec, output: str
    ) -> web.StreamResponse:
        body = await request.read()
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            name = key.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        params = {key: ",".join(request.query.getall(key)) for key in request.query}
        req = func.HttpRequest(
            request.method,
            str(request.url),
            headers=headers,
            params=params,
            route_params=dict(request.match_info),
            body=body,
        )
        try:
            invocation = await self.host.invoke(
                spec,
                {str(spec.trigger["name"]): req},
                reason=f"HTTP {request.method} {request.path}",
            )
        except InvocationFailed as failed:
            return failure_response(failed)
        answer = invocation.value if output == "$return" else invocation.outs[output].get()
        try:
            return to_aiohttp(answer)
        except TypeError as exc:
            log.error("Functions.%s (Id=%s): %s", spec.name, invocation.id, exc)
            return failure_response(InvocationFailed(spec.name, invocation.id))

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        try:
            sock = socket.create_server((self.bind, self.requested_port), family=family)
        except OSError as exc:
            await runner.cleanup()
            raise DevhostError(
                f"cannot listen on {self.bind}:{self.requested_port}: {exc}"
            ) from exc
        site = web.SockSite(runner, sock)
        await site.start()
        self.port = int(sock.getsockname()[1])
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def listing(self) -> list[str]:
        base = self.url + (
            f"/{self.host.config.route_prefix}" if self.host.config.route_prefix else ""
        )
        return [
            f"{entry.spec.name}: [{','.join(entry.methods) or 'ANY'}] {base}/{entry.route}"
            for entry in self.entries
        ]


# -- queue triggers ------------------------------------------------------------------------------

#: While an invocation runs, its message stays invisible this long (the real host keeps renewing
#: a 10-minute lease; devhost takes one long lease). A crashed host's messages reappear after it.
DEFAULT_QUEUE_LEASE = 600.0


@dataclass
class QueueEntry:
    spec: FunctionSpec
    queue: str
    client: QueueClient
    poison: QueueClient
    task: asyncio.Task[None] | None = None


class QueueRunner:
    """Queue triggers the way the host runs them against Azurite (queue-trigger doc):

    - polls with a random exponential back-off from 100 ms up to ``maxPollingInterval`` when
      the queue is empty, and 100 ms after it found messages;
    - fetches ``batchSize`` messages at a time and runs them concurrently, fetching more when
      the ones in flight drop to ``newBatchThreshold``;
    - decodes base64 unless ``messageEncoding`` is ``none``, and passes ``dequeue_count``;
    - keeps a message invisible while its invocation runs (renewed at half the lease);
    - deletes a message when its invocation succeeds; when it fails, makes it visible again
      after ``visibilityTimeout``, or, once it has been dequeued ``maxDequeueCount`` times,
      moves it to ``<queue>-poison``.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.config = host.config
        self.entries: list[QueueEntry] = []
        self.lease = float(host.env.get("DEVHOST_QUEUE_LEASE_SECONDS", DEFAULT_QUEUE_LEASE))
        self._stopping = False

    def add(self, spec: FunctionSpec) -> None:
        queue = resolve_setting_names(str(spec.trigger.get("queueName", "")), self.host.env)
        connection = connection_string(spec.trigger, self.host.env)
        client = QueueClient.from_connection_string(connection, queue)
        poison = QueueClient.from_connection_string(connection, f"{queue}-poison")
        self.entries.append(QueueEntry(spec, queue, client, poison))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in self.entries:
            for client in (entry.client, entry.poison):
                with contextlib.suppress(ResourceExistsError):
                    await loop.run_in_executor(None, client.create_queue)
            entry.task = asyncio.create_task(self._poll(entry))

    async def stop(self) -> None:
        self._stopping = True
        for entry in self.entries:
            if entry.task is not None:
                entry.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await entry.task

    def listing(self) -> list[str]:
        return [
            f"{entry.spec.name}: queueTrigger (queue '{entry.queue}')" for entry in self.entries
        ]

    async def _poll(self, entry: QueueEntry) -> None:
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        wait = 0.1
        batch = self.config.queue_batch_size
        while not self._stopping:
            if len(in_flight) > self.config.queue_new_batch_threshold:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await loop.run_in_executor(
                    None,
                    lambda: list(
                        entry.client.receive_messages(
                            messages_per_page=batch,
                            max_messages=batch,
                            visibility_timeout=int(self.lease),
                        )
                    ),
                )
            except Exception as exc:  # storage unreachable: log, back off, keep polling
                log.warning("queue %s: receive failed: %s", entry.queue, exc)
                messages = []
            else:
                self.host.activity.queue_polls[entry.queue] += 1
            for message in messages:
                task = asyncio.create_task(self._process(entry, message))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if messages:
                wait = 0.1  # "after a message is found, the runtime waits 100 ms"
                await asyncio.sleep(wait)
                continue
            wait = min(self.config.queue_max_polling_interval, wait * 2)
            await asyncio.sleep(wait * (0.5 + random.random() / 2))

    async def _process(self, entry: QueueEntry, message: Any) -> None:
        loop = asyncio.get_running_loop()
        limit = self.config.queue_max_dequeue_count
        if message.dequeue_count > limit:  # left over from a crash: straight to poison
            await loop.run_in_executor(None, self._to_poison, entry, message)
            return
        content = message.content
        raw = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        try:
            body = (
                base64.b64decode(raw, validate=True)
                if self.config.queue_message_encoding == "base64"
                else raw
            )
        except (binascii.Error, ValueError):
            log.error(
                "queue %s: message %s is not valid base64 (the host cannot bind it)",
                entry.queue,
                message.id,
            )
            await self._failed(entry, message)
            return
        trigger = func_queue.QueueMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=body,
            pop_receipt=message.pop_receipt,
            dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on,
        )
        done = asyncio.Event()
        renewal = asyncio.create_task(self._keep_leased(entry, message, done))
        try:
            await self.host.invoke(
                entry.spec,
                {str(entry.spec.trigger["name"]): trigger},
                reason=f"New queue message detected on '{entry.queue}'",
            )
        except InvocationFailed:
            done.set()
            await renewal
            await self._failed(entry, message)
            return
        done.set()
        await renewal  # a renewal under way finishes first: its pop receipt is the valid one
        try:
            await loop.run_in_executor(None, entry.client.delete_message, message)
        except Exception as exc:  # the lease ran out: the message will run again
            log.warning("queue %s: could not delete message %s: %s", entry.queue, message.id, exc)

    async def _keep_leased(self, entry: QueueEntry, message: Any, done: asyncio.Event) -> None:
        """Extend the message's invisibility while its invocation runs, as the host does
        (its queue processor renews the visibility timeout at half its length), so that a
        long invocation, or one of many fetched at once, is not handed to another instance
        meanwhile. The new pop receipt replaces the old one for the delete or release."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.lease / 2)
            if done.is_set():
                return
            try:
                renewed = await loop.run_in_executor(
                    None,
                    lambda: entry.client.update_message(
                        message, visibility_timeout=int(self.lease)
                    ),
                )
            except Exception as exc:  # gone or taken over: the invocation's outcome decides
                log.warning(
                    "queue %s: could not renew message %s: %s", entry.queue, message.id, exc
                )
                return
            message.pop_receipt = renewed.pop_receipt
            message.next_visible_on = renewed.next_visible_on

    async def _failed(self, entry: QueueEntry, message: Any) -> None:
        loop = asyncio.get_running_loop()
        if message.dequeue_count >= self.config.queue_max_dequeue_count:
            await loop.run_in_executor(None, self._to_poison, entry, message)
            return
        visibility = int(self.config.queue_visibility_timeout)
        try:
            await loop.run_in_executor(
                None,
                lambda: entry.client.update_message(message, visibility_timeout=visibility),
            )
        except Exception as exc:
            log.warning("queue %s: could not release message %s: %s", entry.queue, message.id, exc)

    def _to_poison(self, entry: QueueEntry, message: Any) -> None:
        log.warning(
            "Message has reached MaxDequeueCount of %d. Moving message to queue '%s-poison'.",
            self.config.queue_max_dequeue_count,
            entry.queue,
        )
        entry.poison.send_message(message.content)
        entry.client.delete_message(message)


# -- blob triggers -------------------------------------------------------------------------------

RECEIPTS_CONTAINER = "azure-webjobs-hosts"
BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"
#: The receipt's lease in seconds: the real host's ``BlobReceiptManager.LeasePeriod`` (30 s,
#: azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.Storage.Blobs/src/Listeners/
#: BlobReceiptManager.cs). Blob leases last 15 to 60 s (Lease Blob REST API), hence the bounds
#: of ``DEVHOST_BLOB_LEASE_SECONDS``.
DEFAULT_BLOB_LEASE = 30
BLOB_LEASE_BOUNDS = (15, 60)
#: A receipt whose metadata has this key is not complete; without it, it is (the real host's
#: ``BlobReceipt.IncompleteKey``: only the key's presence counts, its value repeats the key).
RECEIPT_INCOMPLETE = "Incomplete"
#: devhost's own receipt metadata: how many times the version failed, in any devhost process.
RECEIPT_FAILED_TRIES = "DevhostFailedTries"
#: Lease errors after which the version is skipped for now (the real host's
#: ``TryAcquireLeaseAsync`` returns null on exactly these and throws on anything else).
_NOT_LEASED = {"LeaseAlreadyPresent", "BlobNotFound", "ContainerNotFound"}


def storage_error_code(exc: HttpResponseError) -> str:
    """The storage service's ``x-ms-error-code`` (azure-storage sets ``error_code`` on its
    errors, as a ``StorageErrorCode`` or a plain string; azure-core's type does not declare it)."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


@dataclass(frozen=True)
class BlobReceipt:
    """What a receipt blob's metadata says about its blob version."""

    completed: bool
    failed_tries: int = 0

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> BlobReceipt:
        """Read the metadata as the real host does: complete unless ``Incomplete`` is there (so
        an empty receipt written by an older devhost, without metadata, counts as done)."""
        keys = {k.lower(): v for k, v in metadata.items()}  # metadata names ignore case
        try:
            tries = int(keys.get(RECEIPT_FAILED_TRIES.lower(), "0"))
        except ValueError:
            tries = 0
        return cls(RECEIPT_INCOMPLETE.lower() not in keys, max(0, tries))

    def to_metadata(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """``metadata`` with this receipt's keys set (other keys are kept)."""
        mine = {RECEIPT_INCOMPLETE.lower(), RECEIPT_FAILED_TRIES.lower()}
        result = {k: v for k, v in metadata.items() if k.lower() not in mine}
        if not self.completed:
            result[RECEIPT_INCOMPLETE] = RECEIPT_INCOMPLETE
        if self.failed_tries:
            result[RECEIPT_FAILED_TRIES] = str(self.failed_tries)
        return result


@dataclass
class BlobEntry:
    spec: FunctionSpec
    container: str
    service: BlobServiceClient
    connection: str
    task: asyncio.Task[None] | None = None


class BlobRunner:
    """Blob triggers against Azurite, each blob version run once by one of any number of devhost
    processes sharing the storage account, as the app's instances share it when it scales out.

    There is no Event Grid locally, so new blobs are found by listing the container (every
    ``DEVHOST_BLOB_POLL_SECONDS``, default 1); the host's webhook for Event Grid-sourced blob
    triggers, ``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>`` with
    BlobCreated events, is served too. The function gets an ``azure.storage.blob.BlobClient``, as
    the SDK-type binding gives it.

    Each version has a receipt blob, ``azure-webjobs-hosts/blobreceipts/<function>/<container>/
    <name>/<etag>``, handled as the real host's ``BlobTriggerExecutor`` and
    ``BlobReceiptManager`` handle theirs (azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.
    Storage.Blobs/src/Listeners/):

    1. a receipt without the ``Incomplete`` metadata key is complete: the version is done and
       never looked at again by this process (counted in ``blobReceiptsFound``);
    2. otherwise the receipt is created if missing, empty, with ``Incomplete`` metadata and
       If-None-Match: * (when another process wins that race, the lease below decides);
    3. a lease on the receipt is taken (``DEVHOST_BLOB_LEASE_SECONDS``, default 30 as the real
       host's). If another process holds it, the version is skipped for now (counted in
       ``blobLeasedElsewhere``): that process has it, and if it dies its lease expires and a
       later scan, here or elsewhere, takes the version over;
    4. under the lease the receipt is read again: completed meanwhile means done (1.);
    5. the function runs; meanwhile the lease is renewed every third of its duration;
    6. success: ``Incomplete`` is removed (If-Match the lease); failure: the failed try count is
       written in the receipt's ``DevhostFailedTries`` metadata, and at ``maxDequeueCount``
       tries (host.json ``extensions.queues``, default 5) the version is reported on
       ``webjobs-blobtrigger-poison`` (the real host's message shape) and its receipt completed;
    7. the lease is released, and the next scan of any process retries a failed version.

    On stop, scanning ends and the versions in progress finish these steps (see :meth:`stop`).

    Where devhost differs from the real host, and why: the real host holds the lease only while
    it puts a message for the version on its internal queue (``azure-webjobs-blobtrigger-
    <hostId>``) and completes the receipt right then; the function runs from that queue, whose
    visibility timeout keeps other instances off it and whose service-side ``DequeueCount``
    counts failures across instances towards ``maxDequeueCount`` (then the poison queue).
    devhost runs the function straight from the scan, so the renewed lease stands for the
    message's visibility and the receipt's ``DevhostFailedTries`` for its dequeue count: the
    count holds across processes as the real one does, and a crash mid-invocation leaves an
    incomplete receipt whose lease expires, as a real message reappears. The tries are also kept
    in memory, so that a count this process could not write (storage trouble, a lost lease)
    still counts here. Receipt paths are devhost's own (the real host's is
    ``<hostId>/<functionId>/<etag>/<container>/<name>``), kept so that older receipts still
    count. A renewal that fails leaves the lease to expire: another process may then run the
    version too (at least once, as with the real host's queue).
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.entries: list[BlobEntry] = []
        self.poll = float(host.env.get("DEVHOST_BLOB_POLL_SECONDS", "1"))
        raw = host.env.get("DEVHOST_BLOB_LEASE_SECONDS", "").strip() or str(DEFAULT_BLOB_LEASE)
        low, high = BLOB_LEASE_BOUNDS
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise DevhostError(f"DEVHOST_BLOB_LEASE_SECONDS must be a whole number {low} to {high}")
        self.lease = int(raw)
        self._tries: dict[tuple[str, str, str], int] = {}
        self._running: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, spec: FunctionSpec) -> None:
        path = resolve_setting_names(str(spec.trigger.get("path", "")), self.host.env)
        container = path.split("/", 1)[0]
        if not container:
            raise BindingError(f"blob trigger path {path!r} names no container")
        connection = connection_string(spec.trigger, self.host.env)
        service = BlobServiceClient.from_connection_string(connection)
        if not self.entries:
            self.host.http.app.router.add_post("/runtime/webhooks/blobs", self._webhook)
        self.entries.append(BlobEntry(spec, container, service, connection))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in self.entries:
            for name in (entry.container, RECEIPTS_CONTAINER):
                with contextlib.suppress(ResourceExistsError):
                    await loop.run_in_executor(
                        None, entry.service.get_container_client(name).create_container
                    )
            entry.task = asyncio.create_task(self._scan(entry))

    async def stop(self) -> None:
        """Stop scanning, then let the versions in progress finish, their leases renewed, and
        record them in their receipts. Cancelling them instead would not stop their functions
        (a worker thread runs to its end; the interpreter waits for it at exit) but would leave
        their receipts incomplete and leased, so another process would run them again once the
        lease expired. The real host's drain mode (on scale-in) does the same: its listeners
        stop and the executions in progress are let finish."""
        for entry in self.entries:
            if entry.task is not None:
                entry.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await entry.task
        if self._tasks:
            log.info("waiting for %d blob version(s) in progress", len(self._tasks))
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def listing(self) -> list[str]:
        return [
            f"{entry.spec.name}: blobTrigger (container '{entry.container}'; also "
            f"{self.host.http.url}/runtime/webhooks/blobs?functionName=Host.Functions."
            f"{entry.spec.name})"
            for entry in self.entries
        ]

    def _receipt(self, entry: BlobEntry, name: str, etag: str) -> BlobClient:
        path = f"blobreceipts/{entry.spec.name}/{entry.container}/{name}/{etag.strip(chr(34))}"
        return entry.service.get_blob_client(RECEIPTS_CONTAINER, path)

    async def _scan(self, entry: BlobEntry) -> None:
        loop = asyncio.get_running_loop()
        container = entry.service.get_container_client(entry.container)
        while True:
            try:
                blobs = await loop.run_in_executor(None, lambda: list(container.list_blobs()))
            except Exception as exc:
                log.warning("container %s: listing failed: %s", entry.container, exc)
            else:
                for blob in blobs:
                    self._start(entry, blob.name, str(blob.etag))
                self.host.activity.blob_scans[entry.container] += 1
            await asyncio.sleep(self.poll)

    def _start(self, entry: BlobEntry, name: str, etag: str) -> None:
        key = (entry.spec.name, name, etag)
        if key in self._running or self._tries.get(key, 0) < 0:
            return
        self._running.add(key)
        task = asyncio.create_task(self._process(entry, name, etag))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._running.discard(key))

    def _done(self, entry: BlobEntry, key: tuple[str, str, str], found: bool) -> None:
        """Never look at this version again; ``found``: another run (or process) did it."""
        self._tries[key] = -1
        if found:
            self.host.activity.blob_receipts_found[entry.container] += 1

    async def _process(self, entry: BlobEntry, name: str, etag: str) -> None:
        loop = asyncio.get_running_loop()
        key = (entry.spec.name, name, etag)
        receipt = self._receipt(entry, name, etag)
        try:
            found = await loop.run_in_executor(None, self._read, receipt)
            if found is not None and found.completed:
                self._done(entry, key, found=True)
                return
            if found is None:
                await loop.run_in_executor(None, self._create, entry, receipt)
            lease, elsewhere = await loop.run_in_executor(None, self._acquire, receipt)
        except Exception as exc:  # storage unreachable: the next scan tries again
            log.warning("blob %s/%s: receipt not read: %s", entry.container, name, exc)
            return
        if lease is None:
            if elsewhere:
                self.host.activity.blob_leased_elsewhere[entry.container] += 1
            return
        renewing = asyncio.create_task(self._renew(entry, name, lease))
        try:
            await self._run_leased(entry, name, etag, receipt, lease)
        except Exception as exc:  # storage trouble around the invocation
            log.warning(
                "blob %s/%s: receipt not updated: %s (a later scan looks at it again)",
                entry.container,
                name,
                exc,
            )
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await loop.run_in_executor(None, self._release, entry, name, lease)

    async def _run_leased(
        self, entry: BlobEntry, name: str, etag: str, receipt: BlobClient, lease: BlobLeaseClient
    ) -> None:
        """Steps 4 to 6 of the class docstring, holding the receipt's lease."""
        loop = asyncio.get_running_loop()
        key = (entry.spec.name, name, etag)
        state = await loop.run_in_executor(None, self._read, receipt)
        if state is None:  # deleted under our lease (by hand, to force a rerun): next scan
            return
        if state.completed:  # another process finished it between our read and our lease
            self._done(entry, key, found=True)
            return
        limit = self.host.config.queue_max_dequeue_count
        tries = max(state.failed_tries, self._tries.get(key, 0))
        if tries < limit:
            client = entry.service.get_blob_client(entry.container, name)
            try:
                await self.host.invoke(
                    entry.spec,
                    {str(entry.spec.trigger["name"]): client},
                    reason=f"New blob detected: {entry.container}/{name}",
                )
            except InvocationFailed:
                tries += 1
                self._tries[key] = tries
            else:
                self._done(entry, key, found=False)
                await loop.run_in_executor(
                    None, self._mark, entry, name, receipt, lease, BlobReceipt(True, tries)
                )
                return
        if tries < limit:
            await loop.run_in_executor(
                None, self._mark, entry, name, receipt, lease, BlobReceipt(False, tries)
            )
            return
        # Reported before the receipt is completed: a crash in between reports it twice
        # rather than never.
        await loop.run_in_executor(None, self._poison, entry, name, etag)
        self._done(entry, key, found=False)
        await loop.run_in_executor(
            None, self._mark, entry, name, receipt, lease, BlobReceipt(True, tries)
        )

    @staticmethod
    def _read(receipt: BlobClient) -> BlobReceipt | None:
        """The receipt's state; None when there is no receipt."""
        try:
            properties = receipt.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return BlobReceipt.from_metadata(properties.metadata or {})

    @staticmethod
    def _create(entry: BlobEntry, receipt: BlobClient) -> None:
        """Create an incomplete receipt unless there is one (the real host's TryCreateAsync)."""
        metadata = BlobReceipt(completed=False).to_metadata({})
        for attempt in range(2):
            try:
                receipt.upload_blob(
                    b"", metadata=metadata, match_condition=MatchConditions.IfMissing
                )
                return
            except ResourceNotFoundError:  # the receipts container was deleted: make it again
                if attempt:
                    raise
                with contextlib.suppress(ResourceExistsError):
                    entry.service.get_container_client(RECEIPTS_CONTAINER).create_container()
            except HttpResponseError as exc:
                # 409 BlobAlreadyExists, or 412 LeaseIdMissing (it exists and is leased): another
                # process made it first; whoever gets the lease runs the version.
                if exc.status_code in (409, 412):
                    return
                raise

    def _acquire(self, receipt: BlobClient) -> tuple[BlobLeaseClient | None, bool]:
        """The lease, or (None, whether another holder has it) when it cannot be had now."""
        try:
            return receipt.acquire_lease(lease_duration=self.lease), False
        except HttpResponseError as exc:
            code = storage_error_code(exc)
            if code in _NOT_LEASED:
                return None, code == "LeaseAlreadyPresent"
            raise

    async def _renew(self, entry: BlobEntry, name: str, lease: BlobLeaseClient) -> None:
        """Renew every third of the lease, so that one failed renewal still leaves two more
        before it expires. Ends when cancelled, or when the lease is lost for good."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await loop.run_in_executor(None, lease.renew)
            except HttpResponseError as exc:
                log.warning(
                    "blob %s/%s: the receipt's lease was not renewed: %s",
                    entry.container,
                    name,
                    storage_error_code(exc) or exc.status_code,
                )
                if exc.status_code in (404, 409):  # gone or taken: another process may run it
                    return
            except Exception as exc:  # storage unreachable: try again before it expires
                log.warning(
                    "blob %s/%s: the receipt's lease was not renewed: %s",
                    entry.container,
                    name,
                    exc,
                )

    @staticmethod
    def _mark(
        entry: BlobEntry, name: str, receipt: BlobClient, lease: BlobLeaseClient, state: BlobReceipt
    ) -> None:
        """Write ``state`` into the receipt's metadata, under the lease (the real host's
        MarkCompletedAsync: read the metadata, change its key, set it with the lease id)."""
        current = receipt.get_blob_properties().metadata or {}
        try:
            receipt.set_blob_metadata(state.to_metadata(current), lease=lease)
        except HttpResponseError as exc:
            # 404: the receipt was deleted; 412: the lease expired and may be another's now.
            # As the real host does, nothing is written then: the version may run again.
            if exc.status_code not in (404, 412):
                raise
            log.warning(
                "blob %s/%s: receipt not updated (%s); the version may run again",
                entry.container,
                name,
                storage_error_code(exc) or exc.status_code,
            )

    @staticmethod
    def _release(entry: BlobEntry, name: str, lease: BlobLeaseClient) -> None:
        try:
            lease.release()
        except Exception as exc:  # it expires by itself; a lost one is another's to release
            log.warning("blob %s/%s: receipt lease not released: %s", entry.container, name, exc)

    def _poison(self, entry: BlobEntry, name: str, etag: str) -> None:
        queue = QueueClient.from_connection_string(
            entry.connection, BLOB_POISON_QUEUE, message_encode_policy=TextBase64EncodePolicy()
        )
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        queue.send_message(
            json.dumps(
                {
                    "Type": "BlobTrigger",
                    "FunctionId": f"Host.Functions.{entry.spec.name}",
                    "BlobType": "BlockBlob",
                    "ContainerName": entry.container,
                    "BlobName": name,
                    "ETag": etag,
                }
            )
        )
        log.error(
            "blob %s/%s failed %d times; reported on %s",
            entry.container,
            name,
            self.host.config.queue_max_dequeue_count,
            BLOB_POISON_QUEUE,
        )

    async def _webhook(self, request: web.Request) -> web.Response:
        """Event Grid's delivery to an Event Grid-sourced blob trigger (BlobCreated events)."""
        wanted = request.query.get("functionName", "").removeprefix("Host.Functions.")
        entry = next((e for e in self.entries if e.spec.name == wanted), None)
        if entry is None:
            return web.json_response({"error": f"no blob trigger {wanted!r}"}, status=404)
        try:
            events = await request.json()
        except ValueError:
            return web.json_response(
                {"error": "the body must be a JSON array of events"}, status=400
            )
        started = 0
        for event in events if isinstance(events, list) else [events]:
            data = event.get("data") or {}
            url = str(data.get("url", ""))
            marker = f"/{entry.container}/"
            if marker not in url:
                continue
            name = url.split(marker, 1)[1]
            props = await asyncio.get_running_loop().run_in_executor(
                None, entry.service.get_blob_client(entry.container, name).get_blob_properties
            )
            self._start(entry, name, str(props.etag))
            started += 1
        return web.json_response({"started": started}, status=202)


# -- Event Grid triggers -------------------------------------------------------------------------


class EventGridRunner:
    """Event Grid triggers, delivered as Event Grid delivers them to the host's webhook:
    ``POST /runtime/webhooks/eventgrid?functionName=<name>`` with a JSON array of events (Event
    Grid or CloudEvents schema). The subscription validation handshake is answered; each
    notification event becomes one invocation with a ``func.EventGridEvent``."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.specs: dict[str, FunctionSpec] = {}

    def add(self, spec: FunctionSpec) -> None:
        if not self.specs:
            self.host.http.app.router.add_post("/runtime/webhooks/eventgrid", self._webhook)
        self.specs[spec.name] = spec

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def listing(self) -> list[str]:
        return [
            f"{name}: eventGridTrigger "
            f"({self.host.http.url}/runtime/webhooks/eventgrid?functionName={name})"
            for name in self.specs
        ]

    async def _webhook(self, request: web.Request) -> web.Response:
        spec = self.specs.get(request.query.get("functionName", ""))
        if spec is None:
            return web.json_response({"error": "unknown functionName"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        events = body if isinstance(body, list) else [body]
        for event in events:
            if not isinstance(event, dict):
                return web.json_response({"error": "events must be objects"}, status=400)
            kind = event.get("eventType") or event.get("type")
            if kind == "Microsoft.EventGrid.SubscriptionValidationEvent":
                code = (event.get("data") or {}).get("validationCode")
                return web.json_response({"validationResponse": code})
        failed = 0
        for event in events:
            grid = func.EventGridEvent(
                id=str(event.get("id", "")),
                data=event.get("data"),
                topic=str(event.get("topic") or event.get("source") or ""),
                subject=str(event.get("subject", "")),
                event_type=str(event.get("eventType") or event.get("type") or ""),
                event_time=None,
                data_version=str(event.get("dataVersion") or event.get("specversion") or ""),
            )
            try:
                await self.host.invoke(
                    spec, {str(spec.trigger["name"]): grid}, reason="EventGrid delivery"
                )
            except InvocationFailed:
                failed += 1
        # Event Grid retries a delivery that is not answered with a success status.
        return web.json_response(
            {"events": len(events), "failed": failed}, status=500 if failed else 200
        )


#: Trigger binding type -> its runner, made once per host. ``httpTrigger`` is the host's own
#: HTTP server and always listens. A queue trigger runner (poll, base64-decode, dequeue count,
#: ``<queue>-poison``) or a blob trigger runner registers here with the same
#: :class:`TriggerRunner` shape and calls :meth:`Host.invoke`.
TRIGGER_RUNNERS: dict[str, Callable[[Host], TriggerRunner]] = {
    "httpTrigger": HttpRunner,
    "queueTrigger": QueueRunner,
    "blobTrigger": BlobRunner,
    "eventGridTrigger": EventGridRunner,
}
