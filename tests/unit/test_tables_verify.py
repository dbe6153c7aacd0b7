"""verify finds damaged data files and log entries; repair sets them aside and keeps the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deltalake import DeltaTable
from tables_helpers import unit_vectors, weight_file

from llm_compression.cli import main
from llm_compression.errors import StoreCorruptError
from llm_compression.tables import MultimodalStorage, repair, verify
from llm_compression.tables.verify import DAMAGED_DIR


@pytest.fixture
def store(tmp_path):
    """Three appends: three data files of 40 rows (ids b0_*, b1_*, b2_*)."""
    model = weight_file(tmp_path)
    s = MultimodalStorage(tmp_path / "s")
    for b in range(3):
        s.add([f"b{b}_{j}" for j in range(40)], unit_vectors(40, seed=b), modality="text",
              model_file=model)  # fmt: skip
    return s


def data_files(store) -> list[str]:
    return sorted(DeltaTable(str(store.path / "text")).file_uris())


def flip_byte(path, at: float = 0.5) -> None:
    raw = bytearray(Path(path).read_bytes())
    raw[int(len(raw) * at)] ^= 0x40
    Path(path).write_bytes(raw)


def test_an_intact_store_verifies_with_every_file_checksummed(store):
    report = verify(store.path)
    assert report.ok and report.rows == 120 and report.files == 3 and not report.unchecked


def test_a_flipped_byte_in_a_vector_is_found_and_repair_names_the_rows(store, capsys):
    victim = data_files(store)[1]
    held = set(
        DeltaTable(str(store.path / "text")).to_pyarrow_table(columns=["id"])["id"].to_pylist()
    )
    flip_byte(victim, 0.3)  # inside the vector pages: it would still decode
    report = verify(store.path)
    assert not report.ok and "checksum mismatch" in report.problems[0]
    assert main(["tables", "verify", str(store.path)]) == 1
    fixed = repair(store.path)
    name = victim.rsplit("/", 1)[1]
    assert any(name in rel for rel in fixed.set_aside)
    assert (store.path / "text" / DAMAGED_DIR / name).exists()  # set aside, not deleted
    lost = next(rows for rel, rows in fixed.lost_rows.items() if name in rel)
    left = set(
        DeltaTable(str(store.path / "text")).to_pyarrow_table(columns=["id"])["id"].to_pylist()
    )
    gone = held - left
    assert len(gone) == 40 and all(i in lost for i in gone)  # it names the rows it held
    assert verify(store.path).ok and MultimodalStorage(store.path).count() == 80


def test_a_truncated_file_is_found_and_intact_files_survive_repair(store):
    victim = data_files(store)[0]
    raw = Path(victim).read_bytes()
    Path(victim).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreCorruptError):
        MultimodalStorage(store.path)
    assert "size" in verify(store.path).problems[0]
    fixed = repair(store.path)
    assert "does not decode" in next(iter(fixed.lost_rows.values()))  # ids from the log's range
    assert verify(store.path).ok and MultimodalStorage(store.path).count() == 80


def test_an_edited_log_entry_is_found_and_a_damaged_newest_entry_set_aside(store):
    log = store.path / "text" / "_delta_log"
    first = log / "00000000000000000001.json"  # the first add (version 0 made the table)
    edited = re.sub(r'"modificationTime":(\d+)', lambda m: f'"modificationTime":{int(m[1]) + 1}',
                    first.read_text(), count=1)  # fmt: skip
    assert edited != first.read_text()
    original = first.read_text()
    first.write_text(edited)  # still valid JSON: only the recorded checksum tells
    assert any("00000000000000000001.json" in p for p in verify(store.path).problems)
    fixed = repair(store.path)
    assert fixed.unrepaired  # an old entry with intact ones after it: restore from a backup
    first.write_text(original)
    newest = log / "00000000000000000003.json"
    newest.write_text(newest.read_text()[:50])  # torn
    assert not verify(store.path).ok
    fixed = repair(store.path)
    assert fixed.set_aside == [f"text/{DAMAGED_DIR}/_delta_log/00000000000000000003.json"]
    assert not fixed.unrepaired
    reopened = MultimodalStorage(store.path)
    assert reopened.count() == 80 and verify(store.path).ok
    reopened.add(
        ["new"], unit_vectors(1), modality="text", model_file=weight_file(store.path.parent)
    )
    assert verify(store.path).ok  # the new version 3 is recorded afresh


def test_unrecorded_files_are_decoded_and_reported_unchecked(store):
    (store.path / "text" / "_llmc_checksums.jsonl").unlink()
    report = verify(store.path)
    assert report.ok and len(report.unchecked) == 3  # the data files, decoded instead
