"""Errors of the store, shared by its backends."""

from __future__ import annotations


class StoreError(OSError):
    """The store cannot be reached or used (server gone, no permission, bad URI).

    Messages name the store URI and the object key, never credentials.
    """


class AlreadyExists(FileExistsError):
    """A create-if-absent write found the object already there."""


class BucketMissing(FileNotFoundError):
    """The store's S3 bucket does not exist: a broken store, never an empty one."""
