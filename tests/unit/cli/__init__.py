"""Unit tests of shared/cli/."""
