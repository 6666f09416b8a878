"""Reading target features and observations from Parquet, per the data contract."""

from pipeline.data.features import DataError, Features, read_features

__all__ = ["DataError", "Features", "read_features"]
