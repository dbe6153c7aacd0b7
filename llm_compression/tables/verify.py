"""``verify``: find damaged data files and log entries; ``repair``: set them aside, keep the rest.

``repair`` deletes nothing: a damaged data file or log entry is moved to ``<table>/_damaged/``,
and a damaged data file is removed from the table by a new Delta commit (``DeltaTable.repair``,
which drops the entries of missing files). Its report names the rows each damaged file held
(their ids when the id column still decodes, else the row count and id range from the log).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from ..errors import StoreNotFoundError
from . import checksums
from .schema import MODALITIES

DAMAGED_DIR = "_damaged"
TABLES = (*MODALITIES, "_files")


@dataclass
class VerifyReport:
    """``problems``: damage found (empty when the store is intact); ``unchecked``: files with no
    recorded checksum that were only decoded; ``damaged_files`` / ``damaged_log`` per table."""

    tables: dict[str, int] = field(default_factory=dict)  # table -> version
    rows: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    damaged_files: dict[str, list[str]] = field(default_factory=dict)
    damaged_log: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RepairReport:
    """``set_aside``: files moved to ``_damaged/``; ``lost_rows``: per damaged data file, the rows
    it held; ``unrepaired``: damage repair cannot fix (restore those files from a backup)."""

    set_aside: list[str] = field(default_factory=list)
    lost_rows: dict[str, str] = field(default_factory=dict)
    unrepaired: list[str] = field(default_factory=list)


def _tables(root: Path) -> list[str]:
    if not (root / "store.json").is_file():
        raise StoreNotFoundError(f"{root} is not an embedding store (no store.json)")
    return [t for t in TABLES if (root / t / "_delta_log").is_dir()]


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check every log entry and every data file of the latest version of every table."""
    root, report = Path(path), VerifyReport()
    for name in _tables(root):
        _verify_table(root / name, name, report)
    return report


def _verify_table(table_dir: Path, name: str, report: VerifyReport) -> None:
    known = checksums.read(table_dir)
    bad_log = [rel for rel in checksums.log_files(table_dir) if not _log_ok(table_dir, rel, known)]
    report.damaged_log[name] = bad_log
    report.problems += [f"{name}/{rel}: damaged or edited log entry" for rel in bad_log]
    try:
        table = DeltaTable(str(table_dir))
        adds = pa.table(table.get_add_actions(flatten=False)).to_pylist()
    except Exception as e:  # deltalake raises several types for an unreadable log
        report.problems.append(f"{name}: the table cannot be opened ({str(e)[:200]})")
        return
    report.tables[name] = table.version()
    bad = []
    for add in adds:
        problem = _file_problem(table_dir, add, known, report, name)
        if problem:
            bad.append(add["path"])
            report.problems.append(f"{name}/{add['path']}: {problem}")
    report.damaged_files[name] = bad
    report.files += len(adds)
    if name != "_files":
        report.rows += sum(a["num_records"] or 0 for a in adds if a["path"] not in bad)


def _log_ok(table_dir: Path, rel: str, known: dict[str, str]) -> bool:
    try:
        raw = (table_dir / rel).read_bytes()
        for line in raw.decode("utf-8").splitlines():
            if line.strip() and not isinstance(json.loads(line), dict):
                return False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return rel not in known or checksums.file_hash(table_dir / rel) == known[rel]


def _file_problem(table_dir: Path, add: dict, known: dict, report: VerifyReport, name: str):
    path = table_dir / add["path"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != add["size_bytes"]:
        return f"size {size} bytes, the log says {add['size_bytes']}"
    if add["path"] in known:
        if checksums.file_hash(path) != known[add["path"]]:
            return "checksum mismatch (the bytes changed after the commit)"
        return None
    report.unchecked.append(f"{name}/{add['path']}")
    try:
        rows = pq.read_table(path).num_rows
    except (OSError, pa.ArrowException) as e:
        return f"does not decode ({str(e)[:120]})"
    if add["num_records"] is not None and rows != add["num_records"]:
        return f"{rows} rows, the log says {add['num_records']}"
    return None


def repair(path: str | os.PathLike) -> RepairReport:
    """Set aside damaged data files and a damaged tail of the log; never delete anything."""
    root, out = Path(path), RepairReport()
    found = verify(root)
    for name in _tables(root):
        table_dir = root / name
        _repair_log(table_dir, name, found.damaged_log.get(name, []), out)
        bad = [] if name not in found.tables else found.damaged_files.get(name, [])
        if bad:
            _repair_files(table_dir, name, bad, out)
    return out


def _repair_log(table_dir: Path, name: str, bad: list[str], out: RepairReport) -> None:
    """A damaged tail (the newest entries) is set aside: the version before becomes live. A
    damaged entry with intact ones after it cannot be dropped without losing those."""
    entries = checksums.log_files(table_dir)
    tail = []
    for rel in reversed(entries):
        if rel not in bad:
            break
        tail.append(rel)
    checksums.forget(table_dir, tail)
    for rel in tail:
        out.set_aside.append(f"{name}/{_set_aside(table_dir, rel)}")
        out.lost_rows[f"{name}/{rel}"] = (
            "the rows committed by this entry are no longer in the table (their data files stay; "
            "re-add them)"
        )
    out.unrepaired += [
        f"{name}/{rel}: damaged, with intact entries after it; restore it from a backup"
        for rel in bad
        if rel not in tail
    ]


def _repair_files(table_dir: Path, name: str, bad: list[str], out: RepairReport) -> None:
    table = DeltaTable(str(table_dir))
    adds = {a["path"]: a for a in pa.table(table.get_add_actions(flatten=True)).to_pylist()}
    for rel in bad:
        out.lost_rows[f"{name}/{rel}"] = _rows_of(table_dir / rel, adds.get(rel, {}))
        if (table_dir / rel).exists():
            out.set_aside.append(f"{name}/{_set_aside(table_dir, rel)}")
    table.repair(dry_run=False)  # commits the removal of the files that are now missing


def _rows_of(path: Path, add: dict) -> str:
    try:
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        return f"{len(ids)} rows: " + ", ".join(ids)
    except Exception:  # the id column is damaged too: what the log says
        return (
            f"{add.get('num_records')} rows with ids from {add.get('min.id')!r} to "
            f"{add.get('max.id')!r} (the id column does not decode)"
        )


def _set_aside(table_dir: Path, rel: str) -> str:
    target = table_dir / DAMAGED_DIR / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(table_dir / rel, target)
    return f"{DAMAGED_DIR}/{rel}"
