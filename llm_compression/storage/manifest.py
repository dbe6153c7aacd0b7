"""The versioned manifest of an embedding store, atomic file writes and the store's locks.

A store is a directory::

    STORE/
      manifests/00000000000000000007.json   one file per committed version; the highest one is live
      data/<modality>/<seq>-<uuid>.parquet  immutable fragments
      tmp/                                  files being written (a crash may leave some: `repair`)
      commit.lock                           fcntl lock held while a manifest version is committed
      writers.lock                          shared by writers of fragments, exclusive for `repair`

A manifest names, per modality table, the live fragments (file, rows, bytes, checksum) and the
row positions deleted from each (tombstones). The checksum names its algorithm: ``crc32:<8 hex>``
(format 2; zlib.crc32 runs at ~2.5 GB/s, sha256 at ~1 GB/s) or ``sha256:<64 hex>`` (fragments
written under format 1, whose manifests had a ``sha256`` field; still read and verified).
Every manifest file is written aside, fsynced and renamed into place under ``commit.lock``, so a
manifest file that exists is complete and readers that read one manifest read one consistent
snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import signal
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import StoreCorruptError, StoreNotFoundError

log = logging.getLogger(__name__)

FORMAT = "llm_compression.embedding_store"
FORMAT_VERSION = 2  # 2: fragment checksums are "<algorithm>:<hex>" in a `checksum` field
READABLE_VERSIONS = (1, 2)
MANIFEST_DIR = "manifests"
DATA_DIR = "data"
TMP_DIR = "tmp"
COMMIT_LOCK = "commit.lock"
WRITERS_LOCK = "writers.lock"
KEEP_MANIFESTS = 16  # older versions are pruned after each commit (history for debugging only)
_READ_CHUNK = 1 << 22
_DIGITS = 20  # zero-padded version numbers sort lexically == numerically
CRASH_ENV = "LLM_COMPRESSION_STORAGE_CRASH_AT"  # fault injection for the crash tests


def crash_point(name: str) -> None:
    """SIGKILL this process at the named point of the write path when the test env var asks for it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FragmentInfo:
    """One immutable Parquet fragment and the row positions deleted from it."""

    file: str  # relative to the store root, e.g. "data/text/000003-<uuid>.parquet"
    rows: int
    bytes: int
    checksum: str  # "crc32:<8 hex>", or "sha256:<64 hex>" for fragments of format-1 stores
    deleted: tuple[int, ...] = ()

    @property
    def live_rows(self) -> int:
        return self.rows - len(self.deleted)


@dataclass(frozen=True)
class TableInfo:
    """One modality table: the model that made its vectors, their dimension, and its fragments."""

    model: str
    dim: int
    dtype: str = "float32"
    fragments: tuple[FragmentInfo, ...] = ()

    @property
    def rows(self) -> int:
        return sum(f.live_rows for f in self.fragments)


@dataclass(frozen=True)
class Manifest:
    """One committed version of the store."""

    version: int
    tables: dict[str, TableInfo] = field(default_factory=dict)
    operation: str = "create"
    committed_at: str = ""

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "operation": self.operation,
            "committed_at": self.committed_at,
            "tables": {name: dataclasses.asdict(t) for name, t in sorted(self.tables.items())},
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT or body.get("format_version") not in READABLE_VERSIONS:
                raise ValueError(
                    f"format {body.get('format')!r} v{body.get('format_version')}, "
                    f"expected {FORMAT!r} v{'/'.join(map(str, READABLE_VERSIONS))} (a newer "
                    "llm_compression may have written it: upgrade to read it)"
                )
            tables = {}
            for name, t in body["tables"].items():
                frags = tuple(_fragment(f) for f in t["fragments"])
                tables[name] = TableInfo(t["model"], t["dim"], t["dtype"], frags)
            return cls(body["version"], tables, body["operation"], body["committed_at"])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreCorruptError(
                f"manifest {where} is damaged ({e}); run `llm-compression storage repair` on the "
                "store to fall back to the previous version, or restore the store from a backup"
            ) from e

    def next(self, tables: dict[str, TableInfo], operation: str) -> Manifest:
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        return Manifest(self.version + 1, tables, operation, now)


def _fragment(entry: dict[str, Any]) -> FragmentInfo:
    entry = {**entry, "deleted": tuple(entry["deleted"])}
    if "sha256" in entry:  # format 1
        entry["checksum"] = f"sha256:{entry.pop('sha256')}"
    return FragmentInfo(**entry)


def file_checksum(path: Path, *, algorithm: str = "crc32") -> tuple[str, int]:
    """(``"<algorithm>:<hex>"``, size in bytes) of a file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        crc, digest, size = 0, hashlib.new(algorithm) if algorithm != "crc32" else None, 0
        while chunk := os.read(fd, _READ_CHUNK):
            size += len(chunk)
            if digest is None:
                crc = zlib.crc32(chunk, crc)
            else:
                digest.update(chunk)
    finally:
        os.close(fd)
    value = f"{crc:08x}" if digest is None else digest.hexdigest()
    return f"{algorithm}:{value}", size


def checksum_matches(path: Path, expected: str) -> bool:
    """Whether a file's bytes still have the manifest's ``"<algorithm>:<hex>"`` checksum."""
    algorithm = expected.partition(":")[0]
    if algorithm not in ("crc32", "sha256"):
        raise StoreCorruptError(
            f"unknown checksum {expected!r} for {path}: expected crc32:<hex> or sha256:<hex>; "
            "the manifest is damaged or from a newer llm_compression"
        )
    return file_checksum(path, algorithm=algorithm)[0] == expected


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(root: Path, suffix: str) -> Path:
    return root / TMP_DIR / f"{uuid.uuid4().hex}{suffix}.tmp"


def write_durable(tmp: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``tmp`` and fsync it (the caller renames it into place)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def manifest_name(version: int) -> str:
    return f"{version:0{_DIGITS}d}.json"


def list_versions(root: Path) -> list[int]:
    """Committed versions, ascending (names that are not manifests are ignored)."""
    try:
        names = os.listdir(root / MANIFEST_DIR)
    except FileNotFoundError:
        raise _not_a_store(root) from None
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _not_a_store(root: Path) -> StoreNotFoundError:
    return StoreNotFoundError(
        f"{root} is not an embedding store (no {MANIFEST_DIR}/ directory); expected a directory "
        "made by MultimodalStorage; pass an empty or new directory with create=True to make one"
    )


def read_manifest(root: Path, version: int | None = None) -> Manifest:
    """The manifest of ``version`` (default: the latest committed one)."""
    if version is None:
        versions = list_versions(root)
        if not versions:
            raise _not_a_store(root)
        version = versions[-1]
    path = root / MANIFEST_DIR / manifest_name(version)
    return Manifest.from_json(path.read_bytes(), str(path))


def commit_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as its version atomically; call with the commit lock held."""
    final = root / MANIFEST_DIR / manifest_name(manifest.version)
    if final.exists():
        raise StoreCorruptError(
            f"manifest version {manifest.version} already exists in {root}: another writer "
            "committed without the commit lock; run `llm-compression storage verify` on the store"
        )
    tmp = tmp_path(root, ".json")
    write_durable(tmp, manifest.to_json())
    crash_point("manifest_tmp")
    os.rename(tmp, final)
    crash_point("manifest_renamed")
    fsync_dir(final.parent)
    _prune_manifests(root, manifest.version)


def _prune_manifests(root: Path, latest: int) -> None:
    for version in list_versions(root):
        if version <= latest - KEEP_MANIFESTS:
            with contextlib.suppress(FileNotFoundError):
                (root / MANIFEST_DIR / manifest_name(version)).unlink()


def init_store(root: Path) -> None:
    """Make an empty store (version 0) in ``root``; a no-op when another process just did."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in (MANIFEST_DIR, DATA_DIR, TMP_DIR):
        (root / sub).mkdir(exist_ok=True)
    with locked(root, COMMIT_LOCK):
        if not list_versions(root):
            commit_manifest(root, Manifest(0, {}, "create", datetime.now(UTC).isoformat()))
            fsync_dir(root)


@contextlib.contextmanager
def locked(root: Path, name: str, *, shared: bool = False) -> Iterator[None]:
    """Hold an fcntl lock on ``root/name`` (released by the kernel if the process dies)."""
    fd = os.open(root / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def describe(manifest: Manifest) -> dict[str, Any]:
    """Per-table figures for `stats`."""
    return {
        name: {
            "model": t.model,
            "dim": t.dim,
            "dtype": t.dtype,
            "rows": t.rows,
            "deleted": sum(len(f.deleted) for f in t.fragments),
            "fragments": len(t.fragments),
            "bytes": sum(f.bytes for f in t.fragments),
        }
        for name, t in sorted(manifest.tables.items())
    }
