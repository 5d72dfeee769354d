"""Image data: webdataset shards (writing, reading, streaming batches), the built-in demo
dataset, and conversion of an image folder into shards."""

from .datasets import LAYOUTS, DatasetOptions, DatasetReport, SplitReport, prepare_dataset
from .demo import DemoShards, demo_shards
from .images import RESIZE_METHOD, decode_rgb
from .prepare import PrepareReport, SkippedFile, folder_to_shards
from .shards import DataError, expand_pattern, image_batches, shard_pattern, write_shards

__all__ = [
    "LAYOUTS", "DataError", "DatasetOptions", "DatasetReport", "DemoShards", "PrepareReport", "RESIZE_METHOD",
    "SkippedFile", "SplitReport", "decode_rgb", "demo_shards", "expand_pattern", "folder_to_shards", "image_batches",
    "prepare_dataset", "shard_pattern", "write_shards",
]
