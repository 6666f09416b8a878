"""Where everything lives: one store URI (local folder or ``s3://bucket/prefix``)."""

from pipeline.storage.errors import AlreadyExists
from pipeline.storage.keys import ByteProgress, ObjectInfo, check_key, usable
from pipeline.storage.names import validate_name
from pipeline.storage.s3 import S3Options
from pipeline.storage.store import Store

__all__ = ["AlreadyExists", "ByteProgress", "ObjectInfo", "S3Options", "Store", "check_key", "usable", "validate_name"]
