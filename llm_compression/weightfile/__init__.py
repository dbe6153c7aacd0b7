"""The Parquet weight format (docs/format.md): schema, writer, metadata and the tensor index.

One Parquet file per model, one row and one row group per tensor, ``zstd`` compressed, so one tensor
can be read without decoding the others and several decode in parallel. Model config, tokenizer
files and source hashes live in the file's key-value metadata. numpy and pyarrow only: no torch.

Example
-------
>>> import numpy as np
>>> from llm_compression.families import preset
>>> path = write_model("minilm.parquet", {"embed.norm.weight": np.ones(384, np.float32)},
...                    config=preset("all-minilm-l6-v2"))  # doctest: +SKIP
>>> read_metadata(path).num_tensors  # doctest: +SKIP
1
"""

from .decoding import decode_tensor
from .format import (
    FORMAT_VERSION,
    QUANT_INT8_SYM_CHANNEL,
    SCHEMA,
    STORAGE_DTYPES,
    UNUSED_PREFIX,
    TensorInfo,
    WeightFileMetadata,
    bfloat16_bits_to_float32,
    float32_to_bfloat16_bits,
    is_unused,
    quantize_int8_rows,
)
from .groupwise import GROUP_QUANT_TYPES, GroupQuantized
from .metadata import read_metadata
from .reader import WeightFile, read_tensor_index
from .writer import write_model

__all__ = [
    "FORMAT_VERSION",
    "GROUP_QUANT_TYPES",
    "GroupQuantized",
    "QUANT_INT8_SYM_CHANNEL",
    "SCHEMA",
    "STORAGE_DTYPES",
    "TensorInfo",
    "UNUSED_PREFIX",
    "WeightFile",
    "WeightFileMetadata",
    "bfloat16_bits_to_float32",
    "decode_tensor",
    "float32_to_bfloat16_bits",
    "is_unused",
    "quantize_int8_rows",
    "read_metadata",
    "read_tensor_index",
    "write_model",
]
