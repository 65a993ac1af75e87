"""``python -m devhost [--port 7071] [--host 127.0.0.1] [--settings FILE] [--app function_app]``.

Serves the app's functions like ``func start`` (see :mod:`devhost.host`), from the current
directory. Prints the functions and their URLs, then ``Host ready: <url>``; SIGINT or SIGTERM
stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from devhost.host import (
    DEFAULT_PORT,
    DevhostError,
    Host,
    HostConfig,
    find_settings_file,
    load_app,
    load_settings,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Local Azure Functions host for this app's bindings (dev and tests only).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"HTTP port; 0 picks a free one (default: Host.LocalHttpPort, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--settings",
        default=None,
        help="settings file whose Values become app settings (default: local.settings.json, "
        "else local.settings.example.json); the environment wins over it",
    )
    parser.add_argument(
        "--app",
        default=os.environ.get("PYTHON_SCRIPT_FILE_NAME", "function_app"),
        help="module holding the FunctionApp (default function_app)",
    )
    parser.add_argument("--log-level", default="INFO", help="default INFO")
    return parser.parse_args(argv)


async def serve(host: Host, settings: Path | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
    except DevhostError as exc:
        print(f"devhost: {exc}", file=sys.stderr, flush=True)
        await host.stop()
        return 1
    try:
        print(f"Settings: {settings if settings else '(no settings file)'}")
        print("\n".join(host.banner()))
        print(f"Host ready: {host.http.url}", flush=True)
        await stop.wait()
        print("devhost: stopping", flush=True)
    finally:
        await host.stop()
    # The last line, after everything the host logged: whoever reads the output knows, on
    # seeing it, that nothing more is coming (rather than waiting a while to be sure).
    print("devhost: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The Azure SDKs log every request at INFO; the functions' own logs are what matter here.
    logging.getLogger("azure").setLevel(max(logging.WARNING, logging.getLogger().level))
    app_dir = Path.cwd()
    try:
        settings = find_settings_file(app_dir, args.settings)
        document = load_settings(settings) if settings else {}
        port = args.port
        if port is None:
            port = int((document.get("Host") or {}).get("LocalHttpPort") or DEFAULT_PORT)
        host = Host(
            load_app(args.app, app_dir), config=HostConfig.load(app_dir), bind=args.host, port=port
        )
    except (DevhostError, ValueError) as exc:
        print(f"devhost: {exc}", file=sys.stderr, flush=True)
        return 2
    return asyncio.run(serve(host, settings))


if __name__ == "__main__":
    sys.exit(main())
