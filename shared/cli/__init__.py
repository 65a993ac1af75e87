"""The operator commands (``python -m shared ...``): push, provision, replay, and the rest."""
