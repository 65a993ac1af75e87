"""A local emulator of the Power BI push-dataset REST API, for offline development and tests.

Start it with ``python -m emulator --port 5300``. It serves the 17 push operations with the
service's limits and error bodies, issues Entra-style tokens (App Service managed identity and
client credentials), injects faults on request, and exposes ``/_emulator/...`` to read back rows
and counters. It is a dev-only tool: never deployed with the function app.
"""

from emulator.app import EmulatorConfig, create_app

__all__ = ["EmulatorConfig", "create_app"]
