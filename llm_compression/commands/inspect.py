"""`llm-compression inspect FILE`: a weight file's metadata and tensor table, without decoding tensors.

The table comes from the small index columns (name, shape, dtype, quantization) and the Parquet
footer (stored bytes per row group); no tensor data is read. Imports pyarrow only, never torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="show a weight file's metadata and tensor table",
        description=(
            "Print a .parquet weight file's format version, family, config summary, bundled files, "
            "sources, totals, file size and compression ratio versus float32, then one line per "
            "tensor (name, shape, dtype, bytes, quantization). Source tensors the model does "
            "not use (unused/<format>/<upstream name>) are marked 'unused'. Reads no tensor data."
        ),
    )
    p.add_argument("file", type=Path, help="the .parquet weight file")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument("--no-tensors", action="store_true", help="omit the tensor table")
    p.set_defaults(func=run)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _config_summary(config: dict[str, Any]) -> list[str]:
    """One line per transformer body (dims), one line for the scalar options."""
    lines = []
    for key, value in config.items():
        if isinstance(value, dict) and "dim" in value:
            lines.append(
                f"{key}: dim={value['dim']} layers={value['n_layers']} heads={value['n_heads']}"
                f" kv_heads={value.get('n_kv_heads') or value['n_heads']} mlp={value['mlp_dim']}"
                f" norm={value.get('norm')}/{value.get('norm_placement')}"
                f" act={value.get('activation')} positions={value.get('positions')}"
                f"({value.get('max_positions')})"
            )
    scalars = {
        k: v
        for k, v in config.items()
        if not isinstance(v, dict | list) and k != "family" and v is not None
    }
    lines.append(" ".join(f"{k}={v}" for k, v in scalars.items()))
    return lines


def describe(path: Path) -> dict[str, Any]:
    """Everything `inspect` shows, as a JSON-ready dict (reads the footer and index columns only)."""
    from ..weightfile import WeightFile, is_unused

    wf = WeightFile(path)
    meta = wf.metadata
    float32_bytes = 4 * meta.total_params
    unused = [t for t in wf.tensors.values() if is_unused(t.name)]
    return {
        "path": str(meta.path),
        "format_version": meta.format_version,
        "family": meta.family,
        "created_by": meta.created_by,
        "storage_dtype": meta.storage_dtype,
        "checksum": meta.checksum,
        "num_tensors": meta.num_tensors,
        "total_params": meta.total_params,
        "unused_tensors": len(unused),
        "unused_params": sum(t.n_params for t in unused),
        "file_size": meta.file_size,
        "float32_size": float32_bytes,
        "ratio_vs_float32": meta.file_size / float32_bytes if float32_bytes else None,
        "config": meta.config,
        "files": {name: len(content) for name, content in meta.files.items()},
        "sources": meta.sources,
        "tensors": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "n_params": t.n_params,
                "nbytes": t.nbytes,
                "stored_bytes": t.stored_bytes,
                "quant_type": t.quant_type,
                "unused": is_unused(t.name),
            }
            for t in wf.tensors.values()
        ],
    }


def _print_summary(info: dict[str, Any]) -> None:
    ratio = info["ratio_vs_float32"]
    print(f"file            {info['path']}")
    print(f"format version  {info['format_version']} ({info['created_by']})")
    print(f"family          {info['family']}")
    for line in _config_summary(info["config"]):
        print(f"config          {line}")
    print(f"storage dtype   {info['storage_dtype']} (checksums: {info['checksum']})")
    print(f"tensors         {info['num_tensors']:,}   params {info['total_params']:,}")
    if info["unused_tensors"]:
        print(
            f"unused          {info['unused_tensors']:,} source tensors ({info['unused_params']:,} "
            "params) kept as unused/<format>/<upstream name>; load_model skips them"
        )
    ratio_text = f"{ratio:.3f}x of float32" if ratio else "n/a (no parameters)"
    print(
        f"file size       {_mib(info['file_size'])} ({info['file_size']:,} bytes); float32 "
        f"{_mib(info['float32_size'])}; ratio {ratio_text}"
    )
    for name, size in sorted(info["files"].items()):
        print(f"file            {name} ({size:,} bytes)")
    for name, digest in sorted(info["sources"].items()):
        print(f"source          {name} sha256 {digest}")


def _print_tensors(tensors: list[dict[str, Any]]) -> None:
    width = max([len(t["name"]) for t in tensors] + [4])
    print(f"\n{'name':<{width}}  {'shape':<18} {'dtype':<8} {'bytes':>13} {'stored':>13}  quant")
    for t in tensors:
        shape = str(tuple(t["shape"]))
        print(
            f"{t['name']:<{width}}  {shape:<18} {t['dtype']:<8} {t['nbytes']:>13,} "
            f"{t['stored_bytes']:>13,}  {t['quant_type'] or '-'}{'  unused' if t['unused'] else ''}"
        )


def run(args: argparse.Namespace) -> int:
    info = describe(args.file)
    if args.no_tensors:
        info.pop("tensors")
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    _print_summary(info)
    if not args.no_tensors:
        _print_tensors(info["tensors"])
    return 0
