"""Unit tests: pure translation and wire shapes, no I/O."""
