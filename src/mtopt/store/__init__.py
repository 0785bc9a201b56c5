"""Episode store: schema, atomic Parquet shard writer, tailing reader with quarantine."""

from mtopt.store.reader import EpisodeReader, StoreNotFoundError
from mtopt.store.schema import SCHEMA_VERSION, Episode, SchemaError
from mtopt.store.writer import EpisodeWriter

__all__ = [
    "SCHEMA_VERSION",
    "Episode",
    "EpisodeReader",
    "EpisodeWriter",
    "SchemaError",
    "StoreNotFoundError",
]
