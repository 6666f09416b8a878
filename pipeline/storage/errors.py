"""Conditions the store's backends signal to it (``StoreError``, what users see, is in :mod:`pipeline.errors`)."""

from __future__ import annotations


class AlreadyExists(FileExistsError):
    """A create-if-absent write found the object already there."""


class BucketMissing(FileNotFoundError):
    """The store's S3 bucket does not exist: a broken store, never an empty one."""
