"""The core package: everything the functions do, without the Functions host.

It never imports ``azure.functions``, so it can be used and tested without the host. It is
grouped by role, and imports point down only:

- ``sources/``: a trigger's input (HTTP bodies, queue messages, blobs, events) -> rows;
- ``engine/``: validate, pack, pace, retry, coalesce, push
  (:class:`~shared.engine.ingest.Ingestor`);
- ``destinations/``: the services rows go to (Power BI) and their credentials;
- ``stores/``: dead letters, checkpoints and storage clients;
- ``cli/``: the operator commands;
- at the top: ``settings``, ``errors``, ``limits``, ``contracts`` (the ground everything
  stands on) and ``runtime`` (which wires the long-lived objects of a process together).

The rule, checked by ``tests/unit/test_project_layout.py``: the engine imports neither
``sources`` nor ``destinations`` (it talks to a destination through
:class:`~shared.engine.destination.Destination`); ``stores`` and the ground import none of
``sources``, ``engine``, ``destinations`` or ``cli``; ``settings``, ``errors``, ``limits`` and
``contracts`` import nothing of the package but each other.
"""
