"""Datasets that ship with the package (no download at run time)."""
