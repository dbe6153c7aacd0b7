"""`verify` checks every fragment of the live version; `repair` removes what a crash left behind."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StoreCorruptError
from .manifest import (
    COMMIT_LOCK,
    DATA_DIR,
    MANIFEST_DIR,
    TMP_DIR,
    WRITERS_LOCK,
    FragmentInfo,
    Manifest,
    checksum_matches,
    commit_manifest,
    list_versions,
    locked,
    manifest_name,
    read_manifest,
)
from .table import open_fragment, vectors_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found. ``ok`` is True when the live version is fully readable and intact."""

    version: int
    fragments: int
    rows: int
    problems: tuple[str, ...]
    orphans: tuple[str, ...]  # fragment files no version needs (a crash or compaction left them)
    temp_files: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class RepairReport:
    """What `repair` removed or set aside."""

    version: int
    removed: tuple[str, ...] = ()
    dropped_fragments: tuple[str, ...] = ()
    manifests_set_aside: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())


def check_fragment(root: Path, frag: FragmentInfo, *, model: str, dim: int) -> str | None:
    """The problem with one fragment, or None: size, checksum, schema, rows, decoding, values."""
    try:
        pf = open_fragment(root, frag, model=model, dim=dim)
        if not checksum_matches(root / frag.file, frag.checksum):
            algorithm = frag.checksum.partition(":")[0]
            return (
                f"{frag.file}: {algorithm} checksum differs from the manifest (the bytes changed)"
            )
        table = pf.read()
        vectors = vectors_of(table)
        if not np.isfinite(vectors).all():
            return f"{frag.file}: vectors contain NaN or inf"
    except StoreCorruptError as e:
        return str(e).split(";")[0]
    except Exception as e:  # noqa: BLE001 - any decoding failure is a finding, not a crash
        return f"{frag.file}: decoding failed ({type(e).__name__}: {e})"
    deleted = frag.deleted
    if list(deleted) != sorted(set(deleted)) or (
        deleted and not 0 <= deleted[0] <= deleted[-1] < frag.rows
    ):
        return f"{frag.file}: deleted row positions are out of range or unsorted"
    return None


def _files_under(root: Path, sub: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root / sub):
        out.extend(os.path.relpath(os.path.join(dirpath, n), root) for n in names)
    return sorted(out)


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check every fragment of the latest version: present, size, checksum, schema, rows, decode."""
    root = Path(path)
    versions = list_versions(root)
    try:
        manifest = read_manifest(root)
    except StoreCorruptError as e:
        return VerifyReport(versions[-1] if versions else -1, 0, 0, (str(e),), (), ())
    problems = []
    for table in manifest.tables.values():
        for frag in table.fragments:
            problem = check_fragment(root, frag, model=table.model, dim=table.dim)
            if problem:
                problems.append(problem)
    live = {f.file for t in manifest.tables.values() for f in t.fragments}
    orphans = tuple(f for f in _files_under(root, DATA_DIR) if f not in live)
    fragments = sum(len(t.fragments) for t in manifest.tables.values())
    rows = sum(t.rows for t in manifest.tables.values())
    temps = tuple(_files_under(root, TMP_DIR))
    return VerifyReport(manifest.version, fragments, rows, tuple(problems), orphans, temps)


def repair(path: str | os.PathLike, *, drop_corrupt: bool = False) -> RepairReport:
    """Remove temp files and unreferenced fragments; set aside a damaged latest manifest.

    Waits for writers in flight. With ``drop_corrupt`` also commits a version without the damaged
    fragments (their rows are lost: restore them from a backup when you can instead).
    """
    root = Path(path)
    list_versions(root)  # StoreNotFoundError for a path that is not a store
    with locked(root, WRITERS_LOCK), locked(root, COMMIT_LOCK):
        manifest, aside = _latest_readable(root)
        removed = _files_under(root, TMP_DIR)
        dropped: list[str] = []
        if drop_corrupt:
            manifest, dropped = _drop_corrupt(root, manifest)
        live = {f.file for t in manifest.tables.values() for f in t.fragments}
        removed += [f for f in _files_under(root, DATA_DIR) if f not in live]
        for rel in removed:
            (root / rel).unlink(missing_ok=True)
    for rel in removed:
        log.info("repair %s: removed %s", root, rel)
    return RepairReport(manifest.version, tuple(removed), tuple(dropped), tuple(aside))


def _latest_readable(root: Path) -> tuple[Manifest, list[str]]:
    aside = []
    for version in reversed(list_versions(root)):
        try:
            return read_manifest(root, version), aside
        except StoreCorruptError:
            name = root / MANIFEST_DIR / manifest_name(version)
            name.rename(name.with_suffix(".json.corrupt"))
            aside.append(str(name.relative_to(root)))
            log.warning("repair %s: set aside damaged manifest %s", root, name.name)
    raise StoreCorruptError(
        f"{root}: no readable manifest is left (set aside: {aside}); restore the store from a backup"
    )


def _drop_corrupt(root: Path, manifest: Manifest) -> tuple[Manifest, list[str]]:
    tables, dropped = {}, []
    for name, table in manifest.tables.items():
        keep = []
        for frag in table.fragments:
            if check_fragment(root, frag, model=table.model, dim=table.dim):
                dropped.append(frag.file)
            else:
                keep.append(frag)
        if keep:
            tables[name] = dataclasses.replace(table, fragments=tuple(keep))
    if not dropped:
        return manifest, dropped
    new = manifest.next(tables, "repair")
    commit_manifest(root, new)
    return new, dropped
