"""Guarantees of the Delta tables: SIGKILL, concurrent writers and readers, creation, full disk."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from tables_helpers import unit_vectors, weight_file

from llm_compression.errors import StoreFullError
from llm_compression.tables import MultimodalStorage, datafile, delta, layout, verify

ROOT = Path(__file__).resolve().parents[2]

# Writes batches forever; prints "begin OP IDS" before and "ack" after each call returns.
WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from llm_compression.tables import MultimodalStorage, store as store_module
    store_module.MIN_FILE_ROWS = 50  # 200-row adds take the parallel-files path
    store_path, model, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = MultimodalStorage(store_path)
    rng = np.random.default_rng(seed)
    def say(*parts):
        print(*parts, flush=True)
    step = 0
    while True:
        step += 1
        op = ["add", "add", "upsert", "delete", "compact"][step % 5]
        ids = [f"p{seed}s{step}r{j}" for j in range(200)]
        if op == "upsert":
            ids = [f"p{seed}s{step - 1}r{j}" for j in range(0, 200, 3)] + ids[:50]
        if op == "delete":
            ids = [f"p{seed}s{step - 2}r{j}" for j in range(1, 200, 4)]
        say("begin", op, json.dumps(ids))
        if op == "compact":
            store.compact()
        elif op == "delete":
            store.delete(ids, missing_ok=True)
        else:
            x = rng.standard_normal((len(ids), 16)).astype(np.float32)
            getattr(store, op)(ids, x, modality="text", model_file=model)
        say("ack")
    """
)


def run_worker(store: Path, model: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(store), str(model), str(seed)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def expected(lines: list[str]) -> tuple[set[str], set[str]]:
    """(ids that must be live, ids whose state is unknown: the call in flight at the kill)."""
    live, maybe, pending = set(), set(), None
    for line in lines:
        if line.startswith("begin"):
            try:
                _, op, ids = line.split(" ", 2)
                pending = (op, set(json.loads(ids)))
            except ValueError:  # the line the kill cut short: its call never started
                pending = None
        elif line == "ack" and pending:
            op, ids = pending
            live = live - ids if op == "delete" else live | (ids if op != "compact" else set())
            pending = None
    if pending:
        maybe = pending[1]
    return live, maybe


def live_ids(path: Path) -> set[str]:
    return set(DeltaTable(str(path / "text")).to_pyarrow_table(columns=["id"])["id"].to_pylist())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_times_loses_no_acknowledged_row(tmp_path, seed):
    """Killed during add, upsert, delete or compaction: every acknowledged row is there, no
    deleted one is back, and the table reads, verifies and takes writes again."""
    model, store = weight_file(tmp_path), tmp_path / "s"
    proc = run_worker(store, model, seed)
    lines = [proc.stdout.readline().strip()]  # the kill window starts once the worker runs
    deadline = time.monotonic() + 3.0 + random.Random(seed).random() * 4
    while time.monotonic() < deadline:
        lines.append(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    lines += rest.splitlines()
    assert sum(line == "ack" for line in lines) >= 5, "the worker did not get going"
    must, maybe = expected(lines)
    got = live_ids(store)
    assert must - maybe <= got
    assert not (got - must - maybe)
    assert verify(store).ok
    reopened = MultimodalStorage(store)
    assert reopened.count() == len(got)
    reopened.add(["after"], unit_vectors(1), modality="text", model_file=model)


def test_two_writer_processes_lose_nothing(tmp_path):
    model, store = weight_file(tmp_path), tmp_path / "s"
    procs = [run_worker(store, model, seed) for seed in (7, 8)]
    outputs = [[] for _ in procs]
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for proc, out in zip(procs, outputs, strict=True):
            out.append(proc.stdout.readline().strip())
    for proc, out in zip(procs, outputs, strict=True):
        proc.send_signal(signal.SIGKILL)
        out += proc.communicate()[0].splitlines()
        assert proc.returncode == -signal.SIGKILL  # not an exception
    got = live_ids(store)
    for out in outputs:
        must, maybe = expected(out)
        assert sum(line == "ack" for line in out) >= 5
        assert must - maybe <= got
    assert verify(store).ok


def test_threads_sharing_one_store_lose_nothing_and_raise_nothing(tmp_path):
    model = weight_file(tmp_path)
    store = MultimodalStorage(tmp_path / "s")
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for step in range(6):
                ids = [f"t{t}s{step}r{j}" for j in range(20)]
                store.add(
                    ids, unit_vectors(20, seed=100 * t + step), modality="text", model_file=model
                )
                store.upsert(ids[:5], unit_vectors(5, seed=7), modality="text", model_file=model)
                store.delete(ids[5:7])
                store.search(unit_vectors(1)[0], k=3)
                if step % 3 == 2:
                    store.compact()
        except BaseException as e:  # noqa: BLE001 - the test reports every failure
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    want = {
        f"t{t}s{s}r{j}" for t in range(4) for s in range(6) for j in range(20) if j not in (5, 6)
    }
    assert live_ids(tmp_path / "s") == want
    assert store.count() == len(want) == MultimodalStorage(tmp_path / "s").count()


def test_readers_never_fail_while_compactions_and_writes_run(tmp_path):
    model = weight_file(tmp_path)
    writer = MultimodalStorage(tmp_path / "s")
    writer.add([f"a{j}" for j in range(50)], unit_vectors(50), modality="text", model_file=model)
    reader = MultimodalStorage(tmp_path / "s")
    stop, failures, reads = threading.Event(), [], [0]

    def read() -> None:
        while not stop.is_set():
            try:
                hits = reader.search(unit_vectors(1)[0], k=5)
                assert len(hits) == 5 and reader.count() >= 50
                reads[0] += 1
            except BaseException as e:  # noqa: BLE001
                failures.append(e)

    thread = threading.Thread(target=read)
    thread.start()
    for step in range(8):
        ids = [f"b{step}_{j}" for j in range(30)]
        writer.add(ids, unit_vectors(30, seed=step), modality="text", model_file=model)
        writer.compact()
        writer.vacuum(retention_hours=0)  # even removing the old files at once
    stop.set()
    thread.join()
    assert not failures and reads[0] > 0


CREATE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from llm_compression.tables import MultimodalStorage
    store = MultimodalStorage(sys.argv[1])
    x = np.random.default_rng(int(sys.argv[3])).standard_normal((10, 16)).astype(np.float32)
    store.add([f"c{sys.argv[3]}_{j}" for j in range(10)], x, modality="text", model_file=sys.argv[2])
    """
)


def test_concurrent_creation_of_one_store_and_table(tmp_path):
    model = weight_file(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, str(tmp_path / "new"), str(model), str(i)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(4)
    ]
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read()
    assert len(live_ids(tmp_path / "new")) == 40


def test_a_store_created_by_another_process_between_two_looks_is_opened(tmp_path, monkeypatch):
    """The interleaving CI once hit: no marker at the first look, then another creator's
    ``store.json`` and table in the listing; opening must see the store, not 'not a store'."""
    model = weight_file(tmp_path)
    MultimodalStorage(tmp_path / "s").add(
        ["a"], unit_vectors(1, 16), modality="text", model_file=model
    )
    looks, real = [], Path.is_file

    def first_look_misses(self):
        looks.append(self.name)
        return (
            False if looks.count(layout.MARKER) == 1 and self.name == layout.MARKER else real(self)
        )

    monkeypatch.setattr(Path, "is_file", first_look_misses)
    layout.open_or_create(tmp_path / "s", create=True)
    assert looks.count(layout.MARKER) == 2


def test_full_disk_is_a_typed_error_and_the_table_stays_readable(tmp_path):
    """A real full disk: a 4 MiB tmpfs (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root; test_enospc_from_deltalake covers the mapping")
    try:
        model = weight_file(tmp_path)
        store, acked = MultimodalStorage(mount / "s"), 0
        with pytest.raises(StoreFullError, match="disk is full"):
            for i in range(100):
                ids = [f"b{i}_{j}" for j in range(2000)]
                store.add(ids, unit_vectors(2000, 64, seed=i), modality="text", model_file=model)
                acked += 2000
        assert acked > 0
        assert MultimodalStorage(mount / "s").count() == acked == len(live_ids(mount / "s"))
        assert verify(mount / "s").ok
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_enospc_from_deltalake_is_a_typed_error(tmp_path, monkeypatch):
    model = weight_file(tmp_path)
    store = MultimodalStorage(tmp_path / "s")
    store.add(["a"], unit_vectors(1), modality="text", model_file=model)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datafile.os, "writev", full)  # our data-file writer
    with pytest.raises(StoreFullError):
        store.add(["b"], unit_vectors(1, seed=2), modality="text", model_file=model)
    monkeypatch.undo()
    assert len(list((tmp_path / "s" / "text").glob("*.parquet"))) == 1  # no partial file left
    monkeypatch.setattr(delta, "write_deltalake", full)  # deltalake's (schema evolution)
    with pytest.raises(StoreFullError):
        store.add(["c"], unit_vectors(1, seed=3), modality="text", model_file=model,
                  metadata=[{"new": 1}])  # fmt: skip
    assert store.count() == 1
