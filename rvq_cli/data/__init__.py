"""Image and video data: webdataset shards, the built-in demo sets, and what turns folders and
downloaded datasets into shards.

Modules: ``format`` (the shard format: writing, patterns, counting), ``stream`` (streaming image
batches; the machinery video shares), ``video`` (streaming clip batches), ``mp4`` (encoding and
decoding mp4), ``images`` (decoding and crops), ``sources`` (data specs such as ``"demo"`` ->
shard patterns), ``demo`` / ``video_demo`` (the demo sets), ``folders`` (folders of image files),
``shards`` (``rvq data shards``), ``prepare`` (``rvq data prepare``) with ``layouts`` /
``video_layouts`` (dataset layouts) and ``writer`` (the resumable shard writer). ``loader`` (a
recipe's loader) reads recipes, so it is imported as ``rvq_cli.data.loader``, not from here.
"""

from .demo import DemoShards, demo_shards
from .folders import SkippedFile
from .format import DataError, count_samples, expand_pattern, shard_pattern, write_shards
from .images import RESIZE_METHOD, decode_rgb
from .layouts import DatasetOptions
from .prepare import LAYOUTS, prepare_dataset
from .shards import PrepareReport, folder_to_shards
from .sources import resolve_data
from .stream import image_batches
from .writer import DatasetReport, SplitReport

__all__ = [
    "LAYOUTS", "DataError", "DatasetOptions", "DatasetReport", "DemoShards", "PrepareReport", "RESIZE_METHOD",
    "SkippedFile", "SplitReport", "count_samples", "decode_rgb", "demo_shards", "expand_pattern", "folder_to_shards",
    "image_batches", "prepare_dataset", "resolve_data", "shard_pattern", "write_shards",
]
