"""Where rows go: the Power BI client (``powerbi``) and its token providers (``auth``), each
implementing the engine's :class:`~shared.engine.destination.Destination`.
"""
