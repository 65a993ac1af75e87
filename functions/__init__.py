"""Trigger adapters: one Blueprint module per trigger family (HTTP, queue, blob).

They stay thin: parse the binding, call the core in shared/, and map its result to the
trigger's idiom. No business logic lives here.
"""
