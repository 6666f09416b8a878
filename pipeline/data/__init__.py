"""Reading target features and observations from Parquet, per the data contract."""

from pipeline.data.features import Features, read_features

__all__ = ["Features", "read_features"]
