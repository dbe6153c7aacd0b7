"""Temp files beside a weight file being written: made locked and named by the writer's pid, and
removed once their writer is gone (a killed ``convert`` leaves one; a live writer's is kept)."""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


def _new_temp(path: Path) -> tuple[str, int]:
    """A new temp file beside ``path`` named with our pid, and an fd holding an flock on it.

    The lock lasts until the fd is closed or the process dies, which is how `remove_stale_temps`
    tells a live write from a killed one. The file gets the usual permissions (umask), not 0600.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return str(tmp), fd


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that killed writes of ``path`` left beside it; return them.

    A temp file is stale when the process named in it is gone and no process holds its flock.
    Temp files of older versions (no pid in the name, no lock) count as stale once untouched for
    `LEGACY_TEMP_SECONDS`. Another process's write in progress is never touched.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _is_stale(tmp, path.name):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            logger.info("removed %s, left by a write of %s that did not finish", tmp, path)
    return removed


LEGACY_TEMP_SECONDS = 3600
_TEMP_MIDDLE = re.compile(r"(?:(\d+)\.)?[0-9a-f]{12}")  # "<pid>.<hex>", or "<hex>" (legacy)


def _is_stale(tmp: Path, destination: str) -> bool:
    match = _TEMP_MIDDLE.fullmatch(tmp.name[len(destination) + 2 : -len(".tmp")])
    if match is None:  # another destination's, or not a temp file of ours at all
        return False
    pid = int(match[1]) if match[1] else None
    try:
        if pid is None and time.time() - tmp.stat().st_mtime < LEGACY_TEMP_SECONDS:
            return False
        if pid is not None and _alive(pid):
            return False
        fd = os.open(tmp, os.O_RDONLY)
    except OSError:  # gone already, or not ours to read
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a live writer holds it (e.g. in another pid namespace)
        return False
    finally:
        os.close(fd)
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be writing the same destination
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def _fsync(file: str) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        _fsync(str(folder))
    except OSError:  # some filesystems cannot fsync a directory; the rename already happened
        logger.debug("could not fsync folder %s", folder)
