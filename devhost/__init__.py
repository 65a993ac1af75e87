"""A small local Azure Functions host for development and tests (Core Tools cannot be installed).

- ``python -m devhost``: serve ``function_app.py``'s own bindings (see :mod:`devhost.host`).
- ``python -m devhost.run`` (``make run``): Azurite + the Power BI emulator + the host, wired
  together (see :mod:`devhost.run`).

Dev only: nothing here is deployed or imported by the function app.
"""
