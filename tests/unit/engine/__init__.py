"""Unit tests of shared/engine/."""
