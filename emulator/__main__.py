"""Command line: ``python -m emulator [--host H] [--port N] [--time-scale X] [--db PATH] ...``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from emulator.access import Member, TenantSetting, parse_member
from emulator.app import EmulatorConfig, create_app
from emulator.errors import ApiError
from emulator.faults import FaultConfigError, FaultPlan
from emulator.identity import ClientApp, IdentityConfig
from emulator.kusto import STREAMING_MODES, KustoConfig
from emulator.live import blob_endpoint
from emulator.tls import make_certificate, server_context

#: A development client registered by default (not a real secret: the emulator is local only).
DEFAULT_CLIENT_ID = "00000000-0000-0000-0000-00000000c11e"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"
DEFAULT_USER_ASSIGNED = "00000000-0000-0000-0000-0000000000a1"
#: The storage connection string of the app's dead letters, for the dashboard. An environment
#: variable, not a flag: a connection string carries an account key, and argv is public (ps).
DEADLETTER_CONNECTION_ENV = "EMULATOR_DEADLETTER_CONNECTION"
#: The storage (Azurite) connection string behind the Kusto surface's queued ingestion; an
#: environment variable for the same reason.
KUSTO_STORAGE_ENV = "EMULATOR_KUSTO_STORAGE_CONNECTION"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="Local emulator of the Power BI push-dataset REST API (dev and tests only).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5300, help="http port; 0 picks a free one")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="run quota windows this many times faster (60: an hour lasts a minute)",
    )
    parser.add_argument("--db", default=":memory:", help="SQLite file to keep state across runs")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also serve https (needed by MSAL's authority) on --tls-port with a self-signed cert",
    )
    parser.add_argument(
        "--tls-port",
        type=int,
        default=None,
        help="https port (default port+1; a free one with --port 0)",
    )
    parser.add_argument("--tls-dir", default=None, help="where to write the certificate")
    parser.add_argument("--config", default=None, help="JSON file: identities and workspaces")
    parser.add_argument(
        "--workspace",
        action="append",
        default=[],
        metavar="NAME[=ID]",
        help="create a workspace (repeatable)",
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="register a service principal with a secret (repeatable)",
    )
    parser.add_argument(
        "--client-cert",
        action="append",
        default=[],
        metavar="ID:CERT.pem",
        help="register a service principal with a certificate (repeatable)",
    )
    parser.add_argument(
        "--user-assigned",
        action="append",
        default=[],
        metavar="CLIENT_ID[=PRINCIPAL_ID]",
        help="assign a user-assigned managed identity (repeatable)",
    )
    parser.add_argument("--identity-header", default=None, help="the expected IDENTITY_HEADER")
    parser.add_argument("--token-lifetime", type=int, default=None, help="seconds (default 3600)")
    parser.add_argument("--faults", default=None, help="initial fault plan as JSON")
    parser.add_argument(
        "--service-principals",
        choices=("on", "off"),
        default=None,
        help="the tenant setting 'Service principals can use Fabric APIs' at start (default: "
        "the --config file's, else the stored one, else on)",
    )
    parser.add_argument(
        "--deadletter-container",
        default="deadletter",
        help="the app's dead-letter container, shown on the dashboard when "
        f"${DEADLETTER_CONNECTION_ENV} holds its storage connection string (default: deadletter)",
    )
    parser.add_argument(
        "--kusto-database",
        action="append",
        default=[],
        metavar="NAME",
        help="a KQL database of the Kusto surface (repeatable; default: Sales)",
    )
    parser.add_argument(
        "--kusto-streaming",
        choices=STREAMING_MODES,
        default="policy",
        help="streaming ingestion: 'policy' (needs the table or database policy, as ADX), "
        "'on' (always, as Fabric), 'off' (the cluster capability is off: 404)",
    )
    parser.add_argument(
        "--kusto-batch-seconds",
        type=float,
        default=None,
        help="queued ingestion's batching delay (default 1; the service's is 300), used when "
        f"${KUSTO_STORAGE_ENV} holds the storage connection string",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """Turn the command line (and ``--config`` file) into an :class:`EmulatorConfig`."""
    file: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    identity = IdentityConfig()
    for key in ("tenant_id", "identity_header", "system_principal_id", "token_lifetime"):
        if key in file:
            setattr(identity, key, file[key])
    identity.clients[DEFAULT_CLIENT_ID] = ClientApp(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
    identity.user_assigned[DEFAULT_USER_ASSIGNED] = "principal-" + DEFAULT_USER_ASSIGNED
    for client in file.get("clients", []):
        cert = Path(client["certificate"]).read_bytes() if client.get("certificate") else None
        identity.clients[client["client_id"]] = ClientApp(
            client["client_id"], client.get("secret"), cert
        )
    for spec in args.client:
        client_id, _, secret = spec.partition(":")
        identity.clients[client_id] = ClientApp(client_id, secret or None)
    for spec in args.client_cert:
        client_id, _, path = spec.partition(":")
        existing = identity.clients.get(client_id)
        identity.clients[client_id] = ClientApp(
            client_id, existing.secret if existing else None, Path(path).read_bytes()
        )
    assigned = dict(file.get("user_assigned", {}))
    for spec in args.user_assigned:
        client_id, _, principal = spec.partition("=")
        assigned[client_id] = principal or "principal-" + client_id
    identity.user_assigned.update(assigned)
    if args.identity_header:
        identity.identity_header = args.identity_header
    if args.token_lifetime is not None:
        identity.token_lifetime = args.token_lifetime
    workspaces: list[tuple[str, str | None]] = [
        (w["name"], w.get("id")) for w in file.get("workspaces", [])
    ]
    members: dict[str, list[Member]] = {
        w["name"]: _config_members(w["name"], w["members"])
        for w in file.get("workspaces", [])
        if "members" in w
    }
    tenant = _config_tenant(file["tenant"]) if "tenant" in file else None
    if args.service_principals is not None:
        allowed = tenant.allowed_principals if tenant is not None else None
        tenant = TenantSetting(args.service_principals == "on", allowed)
    for spec in args.workspace:
        name, _, workspace_id = spec.partition("=")
        workspaces.append((name, workspace_id or None))
    faults = FaultPlan.from_json(json.loads(args.faults)) if args.faults else FaultPlan()
    connection = os.environ.get(DEADLETTER_CONNECTION_ENV, "").strip()
    kusto = KustoConfig(
        databases=list(args.kusto_database) or ["Sales"],
        streaming=args.kusto_streaming,
        storage=os.environ.get(KUSTO_STORAGE_ENV, "").strip() or None,
    )
    if args.kusto_batch_seconds is not None:
        if args.kusto_batch_seconds < 0:
            raise ValueError("--kusto-batch-seconds must be 0 or more")
        kusto.batch_seconds = args.kusto_batch_seconds
    return EmulatorConfig(
        identity=identity,
        db_path=args.db,
        time_scale=args.time_scale,
        workspaces=workspaces,
        faults=faults,
        deadletters=(connection, args.deadletter_container) if connection else None,
        members=members,
        tenant=tenant,
        kusto=kusto,
    )


def _config_members(workspace: str, value: Any) -> list[Member]:
    """A workspace's ``members`` from the config file (same form as the admin API's)."""
    if not isinstance(value, list):
        raise ValueError(f"workspace {workspace!r}: 'members' must be a list")
    try:
        return [
            parse_member(m, f"member {i} of workspace {workspace!r}") for i, m in enumerate(value)
        ]
    except ApiError as exc:
        raise ValueError(exc.details[0]["message"] if exc.details else exc.message) from None


def _config_tenant(value: Any) -> TenantSetting:
    """The config file's ``tenant`` (same form as ``PUT /_emulator/tenant``)."""
    try:
        return TenantSetting.from_json(value)
    except ApiError as exc:
        raise ValueError(exc.details[0]["message"] if exc.details else exc.message) from None


async def serve(args: argparse.Namespace, config: EmulatorConfig) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = _bound_port(site)
    base = f"http://{args.host}:{port}"
    identity = config.identity
    lines = [
        "Power BI push API emulator (dev only)",
        f"  API:        {base}/v1.0/myorg",
        f"  Managed identity endpoint: {base}/msi/token "
        f"(IDENTITY_ENDPOINT; IDENTITY_HEADER={identity.identity_header})",
        f"  Admin:      {base}/_emulator/state",
        f"  Tenant:     {base}/_emulator/tenant (service principals: "
        f"{_tenant_summary(app['emulator'].tenant)})",
        f"  Dashboard:  {base}/",
        f"  Kusto:      {base}   (databases: {', '.join(config.kusto.databases)}; streaming: "
        f"{config.kusto.streaming}; queued: {'on' if config.kusto.storage else 'off'})",
    ]
    if config.deadletters is not None:
        connection, container = config.deadletters
        lines.append(f"  Dead letters: container {container} at {blob_endpoint(connection)}")
    lines += [
        f"  Time scale: {config.time_scale}   State: {config.db_path}",
    ]
    if args.tls:
        tls_dir = Path(args.tls_dir or tempfile.mkdtemp(prefix="pbi-emulator-tls-"))
        cert, key = make_certificate(tls_dir)
        tls_site = web.TCPSite(
            runner,
            args.host,
            _tls_port(args, port),
            ssl_context=server_context(cert, key),
        )
        await tls_site.start()
        tls_base = f"https://{args.host}:{_bound_port(tls_site)}"
        lines.append(f"  HTTPS:      {tls_base}   (certificate: {cert})")
        lines.append(f"  Authority:  {tls_base}/{identity.tenant_id}")
    print("\n".join(lines), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _tenant_summary(tenant: TenantSetting) -> str:
    if not tenant.service_principals_enabled:
        return "off"
    if tenant.allowed_principals is None:
        return "on"
    return f"on for {len(tenant.allowed_principals)} principal(s)"


def _tls_port(args: argparse.Namespace, port: int) -> int:
    """--tls-port, else the next port; with --port 0, another free port (port+1 may be taken)."""
    if args.tls_port is not None:
        return int(args.tls_port)
    return 0 if args.port == 0 else port + 1


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound socket only here
    assert server is not None and isinstance(server, asyncio.base_events.Server)
    port: int = server.sockets[0].getsockname()[1]
    return port


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        config = build_config(args)
    except (OSError, ValueError, KeyError, FaultConfigError) as exc:
        print(f"emulator: bad configuration: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(args, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
