"""Fixtures that run the emulator as a real server (``python -m emulator``) on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.azurite import drain, stop_process

REPO = Path(__file__).resolve().parents[2]
TENANT = "00000000-0000-0000-0000-00000000e1e1"
IDENTITY_HEADER = "test-identity-header"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "test-client-secret"
CERT_CLIENT_ID = "66666666-7777-8888-9999-000000000000"
USER_ASSIGNED_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
WORKSPACE_NAME = "Sales Analytics"
WORKSPACE_ID = "3d9b93c6-7b6d-4801-a491-1738910904fd"
POWERBI_RESOURCE = "https://analysis.windows.net/powerbi/api"


@dataclass
class EmulatorProcess:
    """A running ``python -m emulator`` and what it printed."""

    process: subprocess.Popen[str]
    base: str
    tls_base: str | None
    cert: Path | None
    output: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"{self.base}/v1.0/myorg"

    def stop(self) -> None:
        stop_process(self.process)


def start_emulator(*args: str, tmp: Path, env: dict[str, str] | None = None) -> EmulatorProcess:
    """Start the emulator with ``args`` (and ``env``, else this environment) on a free port and
    wait until it serves."""
    command = [
        sys.executable,
        "-m",
        "emulator",
        "--port",
        "0",
        "--identity-header",
        IDENTITY_HEADER,
        "--client",
        f"{CLIENT_ID}:{CLIENT_SECRET}",
        "--user-assigned",
        USER_ASSIGNED_ID,
        "--workspace",
        f"{WORKSPACE_NAME}={WORKSPACE_ID}",
        *args,
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    base = tls_base = None
    cert = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if match := re.search(r"API:\s+(http://[\d.:]+)/v1.0/myorg", line):
            base = match.group(1)
        if match := re.search(r"HTTPS:\s+(https://[\d.:]+)\s+\(certificate: (.+)\)", line):
            tls_base, cert = match.group(1), Path(match.group(2))
        if "Time scale" in line and ("--tls" not in args):
            break
        if "Authority:" in line:
            break
    if base is None:
        process.kill()
        raise AssertionError("emulator did not start:\n" + "\n".join(lines))
    drain(process, lines)
    return EmulatorProcess(process, base, tls_base, cert, lines)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """One emulator for the session, with TLS, a certificate client and a workspace."""
    tmp = tmp_path_factory.mktemp("emulator")
    cert_path, _ = make_client_certificate(tmp)
    process = start_emulator(
        "--tls",
        "--tls-dir",
        str(tmp / "tls"),
        "--client-cert",
        f"{CERT_CLIENT_ID}:{cert_path}",
        tmp=tmp,
    )
    yield process
    process.stop()


def make_client_certificate(directory: Path) -> tuple[Path, Path]:
    """An RSA certificate and key for a service principal that signs client assertions."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from emulator.tls import write_self_signed

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return write_self_signed(directory, "sp", key, "test service principal", days=1)


class Api:
    """A thin test client: a token, the two URL prefixes and a few shortcuts."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.session.trust_env = False
        token = self.session.post(f"{emulator.base}/_emulator/token").json()["access_token"]
        self.token = token
        self.session.headers["Authorization"] = f"Bearer {token}"

    def prefix(self, group: str | None) -> str:
        return self.emulator.api + (f"/groups/{group}" if group else "")

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, url, timeout=60, **kwargs)

    def create_dataset(
        self,
        tables: list[dict[str, Any]],
        group: str | None = None,
        retention: str | None = None,
        name: str | None = None,
    ) -> str:
        params = {"defaultRetentionPolicy": retention} if retention else None
        body = {"name": name or f"ds-{uuid.uuid4().hex[:8]}", "tables": tables}
        response = self.request("POST", f"{self.prefix(group)}/datasets", json=body, params=params)
        assert response.status_code == 201, response.text
        dataset_id: str = response.json()["id"]
        return dataset_id

    def rows_url(self, dataset_id: str, table: str, group: str | None = None) -> str:
        return f"{self.prefix(group)}/datasets/{dataset_id}/tables/{table}/rows"

    def post_rows(
        self, dataset_id: str, table: str, rows: list[Any], group: str | None = None
    ) -> requests.Response:
        return self.request("POST", self.rows_url(dataset_id, table, group), json={"rows": rows})

    def stored_rows(self, dataset_id: str, table: str) -> list[dict[str, Any]]:
        url = f"{self.emulator.base}/_emulator/datasets/{dataset_id}/tables/{table}/rows"
        body = self.session.get(url, timeout=60).json()
        rows: list[dict[str, Any]] = body["rows"]
        return rows

    def state(self, dataset_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.session.get(
            f"{self.emulator.base}/_emulator/datasets/{dataset_id}", timeout=60
        ).json()
        return body

    def set_faults(self, **plan: Any) -> None:
        response = self.session.put(f"{self.emulator.base}/_emulator/faults", json=plan, timeout=10)
        assert response.status_code == 200, response.text

    def advance(self, seconds: float) -> None:
        response = self.session.post(
            f"{self.emulator.base}/_emulator/clock", json={"advance": seconds}, timeout=10
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def api(emulator: EmulatorProcess) -> Iterator[Api]:
    """A client with a valid token; any fault plan a test sets is cleared afterwards."""
    client = Api(emulator)
    yield client
    client.session.delete(f"{emulator.base}/_emulator/faults", timeout=10)


def int_table(name: str = "T", columns: int = 1) -> dict[str, Any]:
    """A table of ``columns`` Int64 columns named c0, c1, ..."""
    return {
        "name": name,
        "columns": [{"name": f"c{i}", "dataType": "Int64"} for i in range(columns)],
    }


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
