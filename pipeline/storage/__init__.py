"""Where everything lives: one store URI (local folder or ``s3://bucket/prefix``)."""

from pipeline.storage.errors import AlreadyExists
from pipeline.storage.names import validate_name
from pipeline.storage.s3 import S3Options
from pipeline.storage.store import ObjectInfo, Store

__all__ = ["AlreadyExists", "ObjectInfo", "S3Options", "Store", "validate_name"]
