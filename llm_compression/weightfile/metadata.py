"""Opening a weight file and reading what it says about itself: schema, format version, the
key-value metadata (config, family, bundled files, sources) and its checksum (docs/format.md)."""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptFileError, FormatError, ModelFileNotFoundError
from .format import (
    CHECKSUMS,
    FILE_PREFIX,
    FORMAT_VERSION,
    META_PREFIX,
    METADATA_CHECKSUM_KEY,
    SCHEMA,
    WeightFileMetadata,
    metadata_checksum,
    package_version,
)

_PARQUET_MAGIC = b"PAR1"
FIX_DAMAGED = "the file is damaged: copy it again or re-run `llm-compression convert`"
ARROW_ERRORS = (pa.ArrowException, OSError)
U64 = (1 << 64) - 1  # checksums print as unsigned hex


def open_parquet(path: Path, *, memory_map: bool, verify_pages: bool = False) -> pq.ParquetFile:
    if not path.exists():
        raise ModelFileNotFoundError(
            f"weight file {path} does not exist; check the path or create it with "
            "`llm-compression convert`"
        )
    if path.is_dir():
        raise ModelFileNotFoundError(f"{path} is a folder; pass the .parquet weight file inside it")
    try:
        return pq.ParquetFile(path, memory_map=memory_map, page_checksum_verification=verify_pages)
    except ARROW_ERRORS as e:
        raise unreadable(path, e) from e


def unreadable(path: Path, error: Exception) -> FormatError:
    """FormatError for a file that is not Parquet, CorruptFileError for a damaged Parquet file."""
    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    if head != _PARQUET_MAGIC:
        return FormatError(
            f"{path} is not a Parquet weight file (starts with {head!r}, expected {_PARQUET_MAGIC!r}, "
            f"{size} bytes); pass a file written by `llm-compression convert`"
        )
    return CorruptFileError(
        f"{path} starts like Parquet but its footer cannot be read ({size} bytes; truncated or "
        f"overwritten: {error}); {FIX_DAMAGED}"
    )


def _base_type(t: pa.DataType) -> pa.DataType:
    return {pa.large_binary(): pa.binary(), pa.large_string(): pa.string()}.get(t, t)


def check_schema(path: Path, schema: pa.Schema) -> None:
    got = {f.name: _base_type(f.type) for f in schema}
    expected = {f.name: _base_type(f.type) for f in SCHEMA}
    wrong = sorted(n for n, t in expected.items() if got.get(n) != t)
    if wrong:
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise FormatError(
            f"{path} is a Parquet file but not a llm_compression weight file: columns {wrong} are "
            f"missing or of the wrong type (found {found}); expected the schema of "
            "docs/format.md: convert the model with `llm-compression convert`"
        )


def kv_value(path: Path, kv: dict[bytes, bytes], key: str, parse=str) -> Any:
    raw = kv.get((META_PREFIX + key).encode())
    try:
        if raw is None:
            raise KeyError(key)
        return parse(raw.decode("utf-8"))
    except (KeyError, ValueError, TypeError) as e:
        raise CorruptFileError(
            f"{path}: metadata key {META_PREFIX + key!r} is missing or malformed ({e!r}); "
            f"{FIX_DAMAGED}"
        ) from e


def _check_version(path: Path, kv: dict[bytes, bytes]) -> int:
    if (META_PREFIX + "format_version").encode() not in kv:
        raise FormatError(
            f"{path} is a Parquet file but not a llm_compression weight file (no "
            f"{META_PREFIX + 'format_version'!r} metadata); write weight files with "
            "`llm-compression convert` or llm_compression.weightfile.write_model"
        )
    version = kv_value(path, kv, "format_version", int)
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{path} is weight format version {version}, but llm_compression {package_version()} reads "
            f"version {FORMAT_VERSION}; upgrade llm_compression or re-convert the model with it"
        )
    return version


def _decode_files(path: Path, kv: dict[bytes, bytes]) -> dict[str, bytes]:
    manifest = kv_value(path, kv, "files", json.loads)
    files: dict[str, bytes] = {}
    for name, entry in manifest.items():
        try:
            packed = base64.b64decode(kv[(FILE_PREFIX + name).encode()], validate=True)
            raw = (
                pa.decompress(packed, entry["size"], codec="zstd", asbytes=True) if packed else b""
            )
            ok = len(raw) == entry["size"] and zlib.crc32(raw) == entry["crc32"]
        except (KeyError, ValueError, TypeError, *ARROW_ERRORS) as e:
            raise CorruptFileError(
                f"{path}: bundled file {name!r} cannot be decoded ({e!r}); {FIX_DAMAGED}"
            ) from e
        if not ok:
            raise CorruptFileError(f"{path}: bundled file {name!r} fails its crc32; {FIX_DAMAGED}")
        files[name] = raw
    return files


def _check_metadata(path: Path, kv: dict[bytes, bytes]) -> bool:
    """Verify the metadata checksum; False for files written before it existed (not checked)."""
    stored = kv.get(METADATA_CHECKSUM_KEY.encode())
    if stored is None:
        return False
    prefix = META_PREFIX.encode()
    try:
        text = {k.decode(): v.decode() for k, v in kv.items() if k.startswith(prefix)}
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path}: metadata is not UTF-8 ({e}); {FIX_DAMAGED}") from e
    algorithm = text[METADATA_CHECKSUM_KEY].split(":", 1)[0]
    if algorithm not in CHECKSUMS:
        raise FormatError(
            f"{path}: the metadata checksum uses {algorithm!r}, which llm_compression "
            f"{package_version()} does not know (it knows {sorted(CHECKSUMS)}); upgrade it"
        )
    computed = metadata_checksum(text, algorithm=algorithm)
    if computed != text[METADATA_CHECKSUM_KEY]:
        raise CorruptFileError(
            f"{path}: the metadata (config, family, bundled files, tensor index) fails its "
            f"checksum (stored {text[METADATA_CHECKSUM_KEY]}, computed {computed}): it was edited "
            "or damaged after the file was written; re-run `llm-compression convert`"
        )
    return True


def _check_config(path: Path, meta: WeightFileMetadata) -> None:
    """The stored config is a JSON object that names the same family as the ``family`` key.

    Rebuilding it into a family config (and so checking every field) is the loader's job: this
    package knows no family (``loader.WeightLoader`` raises FormatError for one that will not build).
    """
    if not isinstance(meta.config, dict):
        raise CorruptFileError(
            f"{path}: metadata key {META_PREFIX + 'config'!r} holds a JSON "
            f"{type(meta.config).__name__}, expected an object of config fields; {FIX_DAMAGED}"
        )
    family = meta.config.get("family")
    if family != meta.family:
        raise CorruptFileError(
            f"{path}: metadata key {META_PREFIX + 'family'!r} says {meta.family!r} but the stored "
            f"config is of family {family!r}; they must agree: {FIX_DAMAGED}"
        )


def parse_metadata(path: Path, pf: pq.ParquetFile) -> WeightFileMetadata:
    kv = pf.metadata.metadata or {}
    version = _check_version(path, kv)
    meta = WeightFileMetadata(
        path=path,
        format_version=version,
        family=kv_value(path, kv, "family"),
        config=kv_value(path, kv, "config", json.loads),
        files=_decode_files(path, kv),
        sources=kv_value(path, kv, "sources", json.loads),
        created_by=kv_value(path, kv, "created_by"),
        storage_dtype=kv_value(path, kv, "storage_dtype"),
        num_tensors=kv_value(path, kv, "num_tensors", int),
        total_params=kv_value(path, kv, "total_params", int),
        checksum=kv_value(path, kv, "checksum"),
        file_size=path.stat().st_size,
    )
    _check_config(path, meta)
    if meta.checksum not in CHECKSUMS:
        raise FormatError(
            f"{path}: tensor checksums use {meta.checksum!r}, which llm_compression "
            f"{package_version()} does not know (it knows {sorted(CHECKSUMS)}); upgrade "
            "llm_compression or re-convert the model with this version"
        )
    if meta.num_tensors != pf.metadata.num_rows or pf.metadata.num_rows != pf.num_row_groups:
        raise CorruptFileError(
            f"{path}: metadata says {meta.num_tensors} tensors but the file has "
            f"{pf.metadata.num_rows} rows in {pf.num_row_groups} row groups (expected one row "
            f"group per tensor); {FIX_DAMAGED}"
        )
    return meta


def checked_metadata(meta: WeightFileMetadata, pf: pq.ParquetFile) -> WeightFileMetadata:
    """``meta`` once the metadata checksum matches. It runs after the structural checks, whose
    messages say exactly what is wrong; it catches the well-formed edits they cannot see."""
    checked = _check_metadata(meta.path, pf.metadata.metadata or {})
    return dataclasses.replace(meta, metadata_checked=checked)


def read_metadata(path: str | Path) -> WeightFileMetadata:
    """The file's format version, family, config dict, bundled files, sources and totals.

    Reads the Parquet footer only (no tensor data).
    """
    path = Path(path)
    pf = open_parquet(path, memory_map=False)
    check_schema(path, pf.schema_arrow)
    return checked_metadata(parse_metadata(path, pf), pf)
