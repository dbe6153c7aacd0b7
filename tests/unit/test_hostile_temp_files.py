"""Temp files of killed writes are removed by the next write; a live writer's never are (10.6)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llm_compression.families import preset
from llm_compression.weightfile import write_model
from llm_compression.weightfile.tempfiles import LEGACY_TEMP_SECONDS, remove_stale_temps

CFG = preset("all-minilm-l6-v2")
TENSORS = {"w": np.ones((4, 4), np.float32)}

# Writes one tensor of `dst`, says so, then blocks until killed: a convert caught mid-write.
_WRITER = """
import sys, threading
import numpy as np
from llm_compression.families import preset
from llm_compression.weightfile import write_model

def tensors():
    yield "a", np.zeros((8, 8), np.float32)
    print("writing", flush=True)
    threading.Event().wait()

write_model(sys.argv[1], tensors(), config=preset("all-minilm-l6-v2"))
"""


@pytest.fixture
def writer(tmp_path):
    """Start a writer of tmp_path/m.parquet; yields (process, its temp file); killed at the end."""
    dst = tmp_path / "m.parquet"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dst)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().decode().strip() == "writing"
        (tmp,) = tmp_path.glob(".m.parquet.*.tmp")
        assert tmp.name.startswith(f".m.parquet.{proc.pid}.")
        yield proc, tmp
    finally:
        proc.kill()
        proc.wait()


def test_next_write_removes_what_a_killed_write_left(tmp_path, writer):
    proc, tmp = writer
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp.exists()  # the leftover of the issue
    write_model(tmp_path / "m.parquet", TENSORS, config=CFG)
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]


def test_a_live_writers_temp_file_is_never_removed(tmp_path, writer):
    proc, tmp = writer
    write_model(tmp_path / "m.parquet", TENSORS, config=CFG)  # a second writer, same destination
    assert tmp.exists() and proc.poll() is None
    assert remove_stale_temps(tmp_path / "m.parquet") == []


def test_a_locked_temp_file_is_kept_even_when_its_pid_looks_dead(tmp_path):
    # A writer in another pid namespace (a container sharing the folder): its pid means nothing
    # here, its flock still does.
    tmp = tmp_path / ".m.parquet.999999999.0123456789ab.tmp"
    tmp.write_bytes(b"partial")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_stale_temps(tmp_path / "m.parquet") == []
    finally:
        os.close(fd)
    assert remove_stale_temps(tmp_path / "m.parquet") == [tmp]


def test_legacy_temp_names_are_removed_once_old(tmp_path):
    fresh = tmp_path / ".m.parquet.0123456789ab.tmp"  # the name older versions wrote
    old = tmp_path / ".m.parquet.ba9876543210.tmp"
    for f in (fresh, old):
        f.write_bytes(b"partial")
    past = time.time() - LEGACY_TEMP_SECONDS - 60
    os.utime(old, (past, past))
    assert remove_stale_temps(tmp_path / "m.parquet") == [old]
    assert fresh.exists()


def test_other_destinations_temp_files_are_not_touched(tmp_path):
    other = tmp_path / ".m.parquet.x.parquet.999999999.0123456789ab.tmp"  # m.parquet.x.parquet's
    other2 = tmp_path / ".n.parquet.999999999.0123456789ab.tmp"
    for f in (other, other2):
        f.write_bytes(b"partial")
        past = time.time() - LEGACY_TEMP_SECONDS - 60
        os.utime(f, (past, past))
    write_model(tmp_path / "m.parquet", TENSORS, config=CFG)
    assert other.exists() and other2.exists()
