"""Checksums of a table's data files and log entries, so that ``verify`` can find damage.

The Parquet files deltalake writes carry no page checksums (a flipped byte in a vector decodes
silently), and Delta log entries carry none either. So after each commit the writer records the
xxh3-64 of every data file and log entry it has not recorded yet in
``<table>/_llmc_checksums.jsonl`` (one JSON object per line, appended and fsynced; Delta readers
and ``vacuum`` ignore names starting with ``_``). A process killed between its commit and this
record leaves those files unrecorded: ``verify`` then only decodes them (reported as unchecked).
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import xxhash

SIDECAR = "_llmc_checksums.jsonl"


def file_hash(path: Path) -> str:
    """xxh3-64 hex of a file, read through a memory map (no copy into Python)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return xxhash.xxh3_64(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return xxhash.xxh3_64(view).hexdigest()


def size(table_dir: Path) -> int:
    """Bytes in the record (it only grows), -1 when there is none."""
    try:
        return (table_dir / SIDECAR).stat().st_size
    except FileNotFoundError:
        return -1


def read(table_dir: Path) -> dict[str, str]:
    """relative path -> xxh3-64 hex of every recorded file (a torn last line is ignored)."""
    try:
        lines = (table_dir / SIDECAR).read_text().splitlines()
    except FileNotFoundError:
        return {}
    out = {}
    for line in lines:
        try:
            entry = json.loads(line)
            if entry["xxh3_64"] is None:  # forgotten: the file was set aside by repair
                out.pop(entry["file"], None)
            else:
                out[entry["file"]] = entry["xxh3_64"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a record cut by a crash: its file is merely unrecorded
    return out


def log_files(table_dir: Path) -> list[str]:
    """Relative paths of the log's commit entries, oldest first."""
    log = table_dir / "_delta_log"
    return sorted(f"_delta_log/{p.name}" for p in log.glob("*.json") if p.stem.isdigit())


def record_new(
    table_dir: Path, data_files: list[str], known: dict[str, str], hashed: dict[str, str]
) -> None:
    """Hash and append the data files and log entries not in ``known`` (updated in place);
    ``hashed``: hashes the writer took of files it wrote (in its threads, the file just written)."""
    new = [f for f in (*log_files(table_dir), *data_files) if f not in known]
    if not new:
        return
    hashes = {}
    for rel in new:
        try:
            hashes[rel] = known[rel] = hashed.get(rel) or file_hash(table_dir / rel)
        except FileNotFoundError:
            continue
    _append(table_dir, hashes)


def forget(table_dir: Path, rels: list[str]) -> None:
    """Drop the records of files set aside (a later file may reuse a log entry's name)."""
    _append(table_dir, dict.fromkeys(rels))


def _append(table_dir: Path, hashes: dict[str, str | None]) -> None:
    lines = [json.dumps({"file": rel, "xxh3_64": h}) + "\n" for rel, h in hashes.items()]
    fd = os.open(table_dir / SIDECAR, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        torn = end > 0 and os.pread(fd, 1, end - 1) != b"\n"  # a record cut by a crash
        os.write(fd, ("\n" if torn else "").encode() + "".join(lines).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
