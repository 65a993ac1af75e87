"""Unit tests of shared/destinations/."""
