"""Import ``function_app`` from an app folder and print its functions as JSON (stdlib only).

Run by ``test_package.py`` as ``python3.11 -I -S package_probe.py APP_DIR``: with ``-I -S`` the
interpreter has only the standard library on its path, so everything else must come from APP_DIR
and ``APP_DIR/.python_packages/lib/site-packages``, the two folders the Functions worker serves a
deployed app from. ``.pth`` files are not processed, as on the worker (it adds the folder to the
path, it does not "install" it).

While importing, a network guard (an audit hook) refuses any socket connection or name look-up,
and ``os.environ`` records every key read, so the test can show that importing the app needs no
setting and no network.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

app_dir = os.path.abspath(sys.argv[1])
site_packages = os.path.join(app_dir, ".python_packages", "lib", "site-packages")
sys.path[:0] = [app_dir, site_packages]


class RecordingEnviron(MutableMapping[str, str]):
    """``os.environ`` that notes every key looked up (``os.getenv`` goes through it too)."""

    def __init__(self, wrapped: MutableMapping[str, str]) -> None:
        self.wrapped = wrapped
        self.read: set[str] = set()

    def note(self, key: object) -> None:
        # os.get_exec_path() looks up b"PATH" as well as "PATH".
        if isinstance(key, (str, bytes)):
            self.read.add(key if isinstance(key, str) else key.decode(errors="replace"))

    def __getitem__(self, key: str) -> str:
        self.note(key)
        return self.wrapped[key]

    def __contains__(self, key: object) -> bool:
        self.note(key)
        return key in self.wrapped

    def __setitem__(self, key: str, value: str) -> None:
        self.wrapped[key] = value

    def __delitem__(self, key: str) -> None:
        del self.wrapped[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.wrapped)

    def __len__(self) -> int:
        return len(self.wrapped)

    def copy(self) -> dict[str, str]:
        return dict(self.wrapped)


# Connections, datagrams and name look-ups. Not socket.bind: urllib3 binds a throw-away socket to
# ::1 at import to learn whether the host has IPv6 (urllib3/util/connection.py, HAS_IPV6), which
# sends nothing.
NETWORK_EVENTS = {
    "socket.connect",
    "socket.sendto",
    "socket.sendmsg",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
}
network_attempts: list[str] = []


def no_network(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: refuse (and note) any network use."""
    if event in NETWORK_EVENTS:
        network_attempts.append(f"{event} {args!r}")
        raise RuntimeError(f"network use while importing the app: {event}")


environ = RecordingEnviron(os.environ)
# The recorder stands in for the process mapping (it is not meant to clear the environment).
os.environ = environ  # type: ignore[assignment]  # noqa: B003
sys.addaudithook(no_network)

import function_app  # noqa: E402  # the import under test comes after the path and the guards

settings_read = sorted(environ.read)
functions = []
for function in function_app.app.get_functions():
    trigger = function.get_trigger()
    functions.append(
        {
            "name": function.get_function_name(),
            "trigger": trigger.get_dict_repr()["type"] if trigger is not None else None,
            "bindings": [json.loads(b) for b in function.get_raw_bindings()],
        }
    )


def origin(module: Any) -> str:
    path = getattr(module, "__file__", None) or ""
    if path.startswith(site_packages + os.sep):
        return "site-packages"
    if path.startswith(app_dir + os.sep):
        return "app"
    return "other"


loaded = {
    name.split(".")[0]: origin(module)
    for name, module in list(sys.modules.items())
    if getattr(module, "__file__", None)
}
json.dump(
    {
        "functions": sorted(functions, key=lambda f: str(f["name"])),
        "env_read": settings_read,
        "network_attempts": network_attempts,
        "site_packages_modules": sorted(n for n, o in loaded.items() if o == "site-packages"),
        "modules_from_elsewhere": sorted(
            n for n, o in loaded.items() if o == "other" and n not in sys.stdlib_module_names
        ),
        "sys_path": sys.path,
    },
    sys.stdout,
    indent=1,
)
