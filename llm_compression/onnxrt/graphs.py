"""Where a weight file's ONNX graphs come from: the file itself, else the cache, else an export.

The graphs hold no weights (``export.py``), so they depend only on the model config: a file
converted with ``convert(..., onnx=True)`` bundles them beside its tokenizer (the file's
``files``, under ``onnx/``); for any other file they are exported once (this needs torch) into
``weights.cache_dir() / "onnx" / <sha256 of the config and GRAPH_VERSION>/`` and read from
there afterwards, with no torch. Decision 0010 says why both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UnsupportedFamilyError
from ..weights import cache_dir

log = logging.getLogger(__name__)

GRAPH_VERSION = 8  # bump when export.py changes the graphs it writes: cached ones are redone
EXPORTABLE = ("bert", "clip", "whisper", "mobilenet_v2")  # the families that embed
INFO = "onnx/info.json"
INT8_WEIGHT = "#int8t"  # placeholder suffix: the int8 weight transposed to (in, out)
INT8_ROWS = "#int8r"  # placeholder suffix: an int8 table (a Gather's) as stored, (rows, dim)
INT8_SCALE = "#scale"  # placeholder suffix: its float32 scale per output channel (per table row)


def graph_name(modality: str, dtype: str) -> str:
    """``onnx/text.float32.onnx``: the name of one graph among the file's bundled files."""
    return f"onnx/{modality}.{dtype}.onnx"


def check_exportable(family_name: str) -> None:
    if family_name not in EXPORTABLE:
        raise UnsupportedFamilyError(
            f"backend='onnxruntime' runs the embedding families {list(EXPORTABLE)}; this file "
            f"is {family_name!r}: use backend='torch'"
        )


def _current(files: dict[str, bytes]) -> bool:
    if INFO not in files:
        return False
    return json.loads(files[INFO]).get("graph_version") == GRAPH_VERSION


def cache_folder(config: dict[str, Any]) -> Path:
    """The cache folder of the graphs of ``config`` (the dict stored in the weight file)."""
    key = json.dumps({"config": config, "graph_version": GRAPH_VERSION}, sort_keys=True)
    return cache_dir() / "onnx" / hashlib.sha256(key.encode()).hexdigest()[:32]


def _read_folder(folder: Path) -> dict[str, bytes]:
    if not (folder / "info.json").is_file():
        return {}
    return {f"onnx/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _write_folder(folder: Path, graphs: dict[str, bytes]) -> None:
    """Written aside and renamed: a reader never sees half a folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    for name, data in graphs.items():
        (tmp / name.removeprefix("onnx/")).write_bytes(data)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote it first
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


def find_graphs(meta: Any) -> dict[str, bytes]:
    """The graphs of the weight file whose metadata is ``meta``: bundled, cached or exported."""
    check_exportable(meta.family)
    bundled = {k: v for k, v in meta.files.items() if k.startswith("onnx/")}
    if _current(bundled):
        return bundled
    folder = cache_folder(meta.config)
    cached = _read_folder(folder)
    if _current(cached):
        return cached
    from ..families import config_from_dict  # torch: this once per config
    from .export import export_graphs

    log.info("exporting the ONNX graphs of %s into %s (once per model config)", meta.path, folder)
    graphs = export_graphs(config_from_dict(meta.config))
    try:
        _write_folder(folder, graphs)
    except OSError as e:
        log.warning("could not cache the ONNX graphs in %s (%s); they are re-exported", folder, e)
    return graphs
