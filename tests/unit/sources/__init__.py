"""Unit tests of shared/sources/."""
