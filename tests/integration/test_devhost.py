"""devhost serves function_app.py's own bindings: real HTTP, the emulator and Azurite behind.

``python -m devhost`` runs as a subprocess on a free port, with app settings from a temporary
settings file plus the environment (which wins), pointing at the session's emulator and Azurite.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.queue import QueueClient

from tests.azurite import Azurite, stop_process
from tests.emulator.conftest import (
    IDENTITY_HEADER,
    REPO,
    WORKSPACE_ID,
    WORKSPACE_NAME,
    Api,
    EmulatorProcess,
)

pytestmark = pytest.mark.integration

PRODUCT_COLUMNS = [
    {"name": "ProductID", "dataType": "Int64"},
    {"name": "Manufacturer", "dataType": "string"},
    {"name": "Category", "dataType": "string"},
    {"name": "Segment", "dataType": "string"},
    {"name": "Product", "dataType": "string"},
    {"name": "IsCompete", "dataType": "bool"},
]
ROWS = [
    {
        "ProductID": 1,
        "Manufacturer": "Contoso",
        "Category": "Electronics",
        "Segment": "Consumer",
        "Product": "Laptop 15",
        "IsCompete": True,
    },
    {
        "ProductID": 2,
        "Manufacturer": "Fabrikam",
        "Category": "Electronics",
        "Segment": "Enterprise",
        "Product": "Dock 4K",
        "IsCompete": False,
    },
]
#: Settings a developer's shell might carry that would change what the app does.
STRIPPED_PREFIXES = ("POWERBI_", "IDENTITY_", "MSI_", "AzureWebJobs")
STRIPPED = ("HTTP_MODE", "HTTP_MAX_BODY_BYTES", "HTTP_TIME_BUDGET_SECONDS", "WEBHOOK_SECRET")
_FUNCTION_LINE = re.compile(r"^\s+(\S+): \[([A-Z,]+)\] (http://\S+)$")


@dataclass
class Devhost:
    """A running ``python -m devhost`` and everything it printed."""

    process: subprocess.Popen[str]
    base: str
    output: list[str] = field(default_factory=list)

    def functions(self) -> dict[str, tuple[list[str], str]]:
        """The startup list: name -> (methods, URL)."""
        found: dict[str, tuple[list[str], str]] = {}
        for line in self.output[self.output.index("Functions:") + 1 :]:
            match = _FUNCTION_LINE.match(line)
            if match is None:
                break
            found[match.group(1)] = (match.group(2).split(","), match.group(3))
        return found

    def stop(self) -> None:
        stop_process(self.process)


def start_devhost(env: dict[str, str], settings: Path, *extra: str, cwd: Path = REPO) -> Devhost:
    """Start devhost on a free port; wait (bounded) for ``Host ready:``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--port", "0", "--settings", str(settings), *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            break
        if match := re.search(r"Host ready: (http://\S+)", line):
            return Devhost(process, match.group(1), output)
    process.kill()
    process.wait()
    raise AssertionError("devhost did not start:\n" + "\n".join(output))


def app_environment(emulator: EmulatorProcess, azurite: Azurite, rows_queue: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(STRIPPED_PREFIXES) and k not in STRIPPED
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "POWERBI_API_URL": emulator.base,
            "POWERBI_AUTH": "managed_identity",
            "IDENTITY_ENDPOINT": f"{emulator.base}/msi/token",
            "IDENTITY_HEADER": IDENTITY_HEADER,
            "POWERBI_WORKSPACE_NAME": WORKSPACE_NAME,
            "AzureWebJobsStorage": azurite.connection_string,
            "ROWS_QUEUE": rows_queue,
            # Datasets made in the emulator without definitions: every target allowed here
            # (ALLOWED_TARGETS has its own tests).
            "ALLOWED_TARGETS": "*/*",
        }
    )
    return env


@functools.cache
def app_functions() -> dict[str, dict[str, Any]]:
    """function_app's functions and their trigger binding, from the app's own metadata.

    Read in a fresh interpreter: ``FunctionApp.get_functions()`` (azure-functions 1.26) raises
    "does not have a unique function name" when called a second time on the same app object.
    """
    script = (
        "import json, function_app\n"
        "print(json.dumps({f.get_function_name(): json.loads(f.get_function_json())['bindings']\n"
        "                  for f in function_app.app.get_functions()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    bindings: dict[str, list[dict[str, Any]]] = json.loads(result.stdout)
    return {
        name: next(b for b in found if b["type"].endswith("Trigger"))
        for name, found in bindings.items()
    }


@pytest.fixture(scope="module")
def rows_queue() -> str:
    return f"rows-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def devhost(
    emulator: EmulatorProcess,
    azurite: Azurite,
    rows_queue: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Devhost]:
    settings = tmp_path_factory.mktemp("devhost") / "local.settings.json"
    settings.write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {
                    "FUNCTIONS_WORKER_RUNTIME": "python",
                    "AzureWebJobsStorage": "UseDevelopmentStorage=true",  # the env wins
                    "ROWS_QUEUE": "not-this-queue",  # the env wins
                    "HTTP_MAX_BODY_BYTES": "1048576",  # only here: the file is read
                },
            }
        )
    )
    env = app_environment(emulator, azurite, rows_queue)
    # Functions that devhost does not serve over HTTP (the queue trigger) are disabled, so that
    # a queue runner added to devhost later cannot take the messages these tests inspect.
    for name, trigger in app_functions().items():
        if trigger["type"] != "httpTrigger":
            env[f"AzureWebJobs.{name}.Disabled"] = "true"
    host = start_devhost(env, settings)
    yield host
    host.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


@pytest.fixture
def dataset(api: Api) -> tuple[str, str]:
    """A fresh SalesMarketing-shaped dataset in the workspace: (name, id)."""
    name = f"Devhost-{uuid.uuid4().hex[:8]}"
    dataset_id = api.create_dataset(
        [{"name": "Product", "columns": PRODUCT_COLUMNS}], WORKSPACE_ID, name=name
    )
    return name, dataset_id


def test_lists_the_apps_own_functions(devhost: Devhost) -> None:
    listed = devhost.functions()
    expected = {
        name: (sorted(trigger["methods"]), f"{devhost.base}/api/{trigger['route']}")
        for name, trigger in app_functions().items()
        if trigger["type"] == "httpTrigger"
    }
    assert {name: (sorted(m), url) for name, (m, url) in listed.items()} == expected
    assert {"add_rows", "post_rows", "health"} <= set(listed)
    assert any("keys are not enforced" in line for line in devhost.output)
    others = [name for name, t in app_functions().items() if t["type"] != "httpTrigger"]
    disabled = next((line for line in devhost.output if line.startswith("Disabled:")), "")
    assert all(name in disabled for name in others)


def test_dataset_without_definition_is_404(devhost: Devhost, http: requests.Session) -> None:
    name = f"NoSuch-{uuid.uuid4().hex[:8]}"
    response = http.post(
        f"{devhost.base}/api/datasets/{name}/tables/Product/rows", json={"rows": ROWS}, timeout=60
    )
    assert response.status_code == 404, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["sent"] == 0
    assert body["error"]["code"] == "NotFoundError"
    assert body["error"]["message"] == (
        f"dataset '{name}' does not exist in workspace '{WORKSPACE_NAME}', and there is no "
        f"definition datasets/{name}.json to create it from"
    )


def test_add_rows_pushes_to_power_bi(
    devhost: Devhost, http: requests.Session, api: Api, dataset: tuple[str, str]
) -> None:
    name, dataset_id = dataset
    response = http.post(
        f"{devhost.base}/api/datasets/{name}/tables/Product/rows", json={"rows": ROWS}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["sent"] == 2
    stored = api.stored_rows(dataset_id, "Product")
    assert sorted(r["Product"] for r in stored) == ["Dock 4K", "Laptop 15"]


def test_rows_endpoint_takes_an_envelope(
    devhost: Devhost, http: requests.Session, api: Api, dataset: tuple[str, str]
) -> None:
    name, dataset_id = dataset
    response = http.post(
        f"{devhost.base}/api/rows",
        json={"dataset": name, "table": "Product", "rows": ROWS},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["sent"] == 2
    assert len(api.stored_rows(dataset_id, "Product")) == 2


def test_queue_mode_puts_base64_messages_on_the_rows_queue(
    devhost: Devhost, http: requests.Session, azurite: Azurite, rows_queue: str
) -> None:
    # No decode policy: read what is really stored, as the Functions queue trigger would.
    client = QueueClient.from_connection_string(azurite.connection_string, rows_queue)

    def take() -> list[dict[str, Any]]:
        messages = list(client.receive_messages(max_messages=32, visibility_timeout=60))
        for message in messages:
            client.delete_message(message)
        return [json.loads(base64.b64decode(m.content, validate=True)) for m in messages]

    response = http.post(
        f"{devhost.base}/api/datasets/SalesMarketing/tables/Product/rows",
        params={"mode": "queue"},
        json={"rows": ROWS},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"queued": 1, "rows": 2}
    assert take() == [{"dataset": "SalesMarketing", "table": "Product", "rows": ROWS}]

    envelopes = [
        {"dataset": "SalesMarketing", "table": "Product", "rows": ROWS[:1]},
        {"dataset": "Other", "table": "T", "workspace": WORKSPACE_ID, "rows": ROWS[1:]},
    ]
    response = http.post(
        f"{devhost.base}/api/rows", params={"mode": "queue"}, json=envelopes, timeout=60
    )
    assert response.status_code == 202, response.text
    assert sorted(map(json.dumps, take())) == sorted(map(json.dumps, envelopes))


def test_health(devhost: Devhost, http: requests.Session, rows_queue: str) -> None:
    response = http.get(f"{devhost.base}/api/health", timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["settings"]["rows_queue"] == rows_queue  # the environment wins over the file
    assert body["settings"]["http_max_body_bytes"] == 1048576  # from the settings file
    assert body["settings"]["workspace_name"] == WORKSPACE_NAME


def test_unknown_route_is_404(devhost: Devhost, http: requests.Session) -> None:
    assert http.get(f"{devhost.base}/api/no-such-function", timeout=10).status_code == 404
    assert http.post(f"{devhost.base}/api/datasets/x/rows", json={}, timeout=10).status_code == 404


TEST_APP = """
import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="boom/{n:int}", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("kaboom " + req.route_params["n"])


@app.route(route="echo/{*rest}", methods=["POST", "PUT"])
@app.queue_output(arg_name="out", queue_name="%ECHO_QUEUE%", connection="Storage")
def echo(req: func.HttpRequest, out: func.Out[bytes]) -> func.HttpResponse:
    out.set(req.get_body())
    answer = {"method": req.method, "route": dict(req.route_params), "params": dict(req.params),
              "header": req.headers.get("x-test")}
    return func.HttpResponse(json.dumps(answer), status_code=201, mimetype="application/json",
                             headers={"X-Echo": "yes"})


@app.route(route="broken", methods=["GET"])
@app.queue_output(arg_name="out", queue_name="%NOT_A_SETTING%", connection="Storage")
def broken(req: func.HttpRequest, out: func.Out[str]) -> str:
    return "never served"


@app.queue_trigger(arg_name="msg", queue_name="later", connection="Storage")
def later(msg: func.QueueMessage) -> None:
    pass
"""


def test_a_failing_function_is_a_500_and_the_host_keeps_serving(
    emulator: EmulatorProcess,
    azurite: Azurite,
    tmp_path: Path,
    http: requests.Session,
) -> None:
    (tmp_path / "test_app.py").write_text(textwrap.dedent(TEST_APP))
    settings = tmp_path / "settings.json"
    echo_queue = f"echo-{uuid.uuid4().hex[:10]}"
    settings.write_text(json.dumps({"Values": {"ECHO_QUEUE": echo_queue}}))
    env = app_environment(emulator, azurite, "unused")
    env["PYTHONPATH"] = str(REPO)
    host = start_devhost(env, settings, "--app", "test_app", cwd=tmp_path)
    try:
        assert set(host.functions()) == {"boom", "echo"}
        output = "\n".join(host.output)
        assert "broken: '%NOT_A_SETTING%' does not resolve to a value" in output
        assert "later: queueTrigger" in output

        response = http.get(f"{host.base}/api/boom/7", timeout=10)
        assert response.status_code == 500
        assert response.json()["error"]["message"] == (
            "Exception while executing function: Functions.boom"
        )
        assert "kaboom" not in response.text
        assert http.get(f"{host.base}/api/boom/seven", timeout=10).status_code == 404

        response = http.put(
            f"{host.base}/api/echo/a/b",
            params={"x": "1"},
            headers={"X-Test": "hi"},
            data=b"\x00raw bytes\xff",
            timeout=10,
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-Echo"] == "yes"
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.json() == {
            "method": "PUT",
            "route": {"rest": "a/b"},
            "params": {"x": "1"},
            "header": "hi",
        }
        client = QueueClient.from_connection_string(azurite.connection_string, echo_queue)
        (message,) = client.peek_messages(max_messages=5)
        assert base64.b64decode(message.content) == b"\x00raw bytes\xff"

        assert host.process.poll() is None
        # The traceback is in the host's log, as the real host logs it.
        deadline = time.monotonic() + 10
        while not any("RuntimeError: kaboom 7" in line for line in host.output):
            assert time.monotonic() < deadline, "\n".join(host.output)
            time.sleep(0.05)
    finally:
        host.stop()
