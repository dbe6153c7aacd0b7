"""Nothing lost: SIGKILL in the write path, concurrent appenders, readers during writes.

Every test runs real subprocesses. Fault injection: the env var LLM_COMPRESSION_STORAGE_CRASH_AT
makes the child SIGKILL itself at a named point of the write path.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from llm_compression.storage import MultimodalStorage, repair, verify
from llm_compression.storage.manifest import CRASH_ENV

DIM = 8
CHILD_PRELUDE = """
import sys, numpy as np
from llm_compression.storage import MultimodalStorage
store = MultimodalStorage(sys.argv[1])
def vecs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32) + 0.1
"""


def run_child(body: str, path, *, crash_at: str | None = None, wait=True):
    env = {**os.environ}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    code = CHILD_PRELUDE + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], env=env, stdout=subprocess.PIPE, text=True
    )
    if wait:
        proc.wait(timeout=60)
    return proc


def vecs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32) + 0.1


def seeded_store(path) -> MultimodalStorage:
    store = MultimodalStorage(path)
    store.add([f"a{i}" for i in range(20)], vecs(20, 0), modality="text", model="m")
    store.add([f"b{i}" for i in range(20)], vecs(20, 1), modality="text", model="m")
    store.delete(["a0"])
    return store


def check_intact(path, expected_ids: set[str]) -> None:
    """The store opens, holds exactly ``expected_ids``, and repair leaves a clean, verified store."""
    store = MultimodalStorage(path, create=False)
    assert set(store.scan("text").column("id").to_pylist()) == expected_ids
    assert store.count() == len(expected_ids)
    assert verify(path).ok
    repair(path)
    report = verify(path)
    assert report.ok and not report.orphans and not report.temp_files
    assert MultimodalStorage(path).count() == len(expected_ids)


BASE = {f"a{i}" for i in range(1, 20)} | {f"b{i}" for i in range(20)}
ADD = {f"c{i}" for i in range(10)}


@pytest.mark.parametrize(
    "point, committed",
    [
        ("fragment_pages", False),  # a half-written Parquet file (no footer) in tmp/
        ("fragment_tmp", False),
        ("fragment_renamed", False),
        ("manifest_tmp", False),
        ("manifest_renamed", True),
    ],
)
def test_sigkill_during_add(tmp_path, point, committed):
    seeded_store(tmp_path)
    child = run_child(
        "store.add([f'c{i}' for i in range(10)], vecs(10, 7), modality='text', model='m')",
        tmp_path,
        crash_at=point,
    )
    assert child.returncode == -signal.SIGKILL
    check_intact(tmp_path, BASE | ADD if committed else BASE)


@pytest.mark.parametrize("point, committed", [("manifest_tmp", False), ("manifest_renamed", True)])
def test_sigkill_during_delete_and_upsert(tmp_path, point, committed):
    seeded_store(tmp_path)
    child = run_child("store.delete(['b1', 'b2'])", tmp_path, crash_at=point)
    assert child.returncode == -signal.SIGKILL
    check_intact(tmp_path, BASE - {"b1", "b2"} if committed else BASE)
    child = run_child(
        "store.upsert(['b3', 'z'], vecs(2, 9), modality='text', model='m')",
        tmp_path,
        crash_at=point,
    )
    assert child.returncode == -signal.SIGKILL
    expected = (BASE - {"b1", "b2"}) | {"z"} if committed else BASE
    check_intact(tmp_path, expected)


@pytest.mark.parametrize(
    "point",
    ["fragment_tmp", "fragment_renamed", "compact_written", "manifest_tmp", "manifest_renamed",
     "compact_committed", "compact_removing"],
)  # fmt: skip
def test_sigkill_during_compact(tmp_path, point):
    seeded_store(tmp_path)
    child = run_child("store.compact()", tmp_path, crash_at=point)
    assert child.returncode == -signal.SIGKILL
    check_intact(tmp_path, BASE)
    store = MultimodalStorage(tmp_path)
    store.compact()
    assert store.stats()["tables"]["text"]["fragments"] == 1
    check_intact(tmp_path, BASE)


LOOPING_ADDER = """
i = 0
while True:
    batch = [f"{sys.argv[2]}-{i}-{j}" for j in range(25)]
    store.add(batch, vecs(25, i), modality="text", model="m")
    print(i, flush=True)
    i += 1
"""


def test_sigkill_at_random_times_loses_no_committed_row(tmp_path):
    rng = random.Random(0)
    MultimodalStorage(tmp_path)
    committed: set[str] = set()
    for round_ in range(3):
        body = LOOPING_ADDER.replace("sys.argv[2]", repr(f"k{round_}"))
        child = run_child(body, tmp_path, wait=False)
        first = child.stdout.readline()  # the loop is running: kill it at a random point
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        done = [int(line) for line in (first + out).split()]
        committed |= {f"k{round_}-{i}-{j}" for i in done for j in range(25)}
        store = MultimodalStorage(tmp_path)
        present = set(store.scan("text").column("id").to_pylist()) if store.count() else set()
        assert committed <= present  # every add reported done is there
        assert len(present - committed) <= 25  # at most the add in flight at the kill
        committed = present
        assert verify(tmp_path).ok
    assert committed


def test_concurrent_appenders_and_compaction_lose_nothing(tmp_path):
    MultimodalStorage(tmp_path)
    body = """
    for i in range(12):
        batch = [f"{sys.argv[2]}-{i}-{j}" for j in range(20)]
        store.add(batch, vecs(20, i), modality="text", model="m")
    """
    children = [run_child(body.replace("sys.argv[2]", repr(p)), tmp_path, wait=False)
                for p in ("p", "q")]  # fmt: skip
    store = MultimodalStorage(tmp_path)
    while any(c.poll() is None for c in children):
        store.compact()
        time.sleep(0.05)
    assert [c.wait() for c in children] == [0, 0]
    expected = {f"{p}-{i}-{j}" for p in "pq" for i in range(12) for j in range(20)}
    assert set(store.scan("text").column("id").to_pylist()) == expected
    assert store.count() == len(expected)
    check_intact(tmp_path, expected)


def test_reader_during_writes_sees_whole_versions(tmp_path):
    MultimodalStorage(tmp_path)
    body = """
    for i in range(40):
        store.add([f"w{i}-{j}" for j in range(10)], vecs(10, i), modality="text", model="m")
    """
    child = run_child(body, tmp_path, wait=False)
    reader = MultimodalStorage(tmp_path)
    seen = set()
    while child.poll() is None or len(seen) < 2:
        count = reader.count()
        assert count == 10 * reader.version  # every version adds exactly one batch of 10
        if count:  # search refreshes too: its result must be one whole version
            assert len(reader.search(vecs(1, 0)[0], k=1000)) == 10 * reader.version
        seen.add(count)
        if child.poll() is not None:
            break
    assert child.wait() == 0
    assert MultimodalStorage(tmp_path).count() == 400
