"""Validation, packing, pacing, retry, coalescing and :class:`~shared.engine.ingest.Ingestor`.

The engine talks to destinations through its own interface
(:class:`~shared.engine.destination.Destination`) and imports neither sources nor destinations.
"""
