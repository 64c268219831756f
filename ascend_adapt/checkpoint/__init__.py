"""Streaming checkpoint I/O: list tensors without reading data, materialize one at a time."""

from .dtypes import canonical_name, numpy_dtype
from .reader import CheckpointReader, open_checkpoint
from .safetensors_io import (SafetensorsWriter, TensorInfo, plan_shards, read_safetensors_header,
                             save_safetensors, shard_file_names)

__all__ = [
    "CheckpointReader", "open_checkpoint", "TensorInfo", "SafetensorsWriter", "save_safetensors",
    "read_safetensors_header", "plan_shards", "shard_file_names", "canonical_name", "numpy_dtype",
]
