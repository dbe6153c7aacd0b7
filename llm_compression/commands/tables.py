"""`llm-compression tables {verify,repair,stats,compact,vacuum} STORE`: maintain an embedding store."""

from __future__ import annotations

import argparse
import json

ACTIONS = {
    "verify": "check every log entry and data file of every table (exit 1 when damaged)",
    "repair": "set damaged data files and log entries aside (never deletes) and say which rows went",
    "stats": "print version, rows, files, bytes, model and dim per table as JSON",
    "compact": "rewrite small data files into large ones (Delta OPTIMIZE)",
    "vacuum": "remove data files no recent version needs, and crash leftovers",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tables",
        help="check, repair, describe, compact or vacuum an embedding store",
        description="Maintain a MultimodalStorage embedding store (docs/storage.md).",
    )
    sub = parser.add_subparsers(dest="tables_command", metavar="ACTION", required=True)
    for name, text in ACTIONS.items():
        action = sub.add_parser(name, help=text, description=text)
        action.add_argument("path", help="the store directory")
        if name == "vacuum":
            action.add_argument("--retention-hours", type=float, default=168.0,
                                help="keep files that versions of the last N hours need (168)")  # fmt: skip
        action.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..tables import MultimodalStorage, repair, verify

    if args.tables_command == "verify":
        report = verify(args.path)
        print(f"store {args.path}: {report.files} data files, {report.rows} rows, versions "
              f"{report.tables}")  # fmt: skip
        for problem in report.problems:
            print(f"DAMAGED {problem}")
        for rel in report.unchecked:
            print(f"unchecked {rel} (no recorded checksum; it decodes)")
        print("ok" if report.ok else f"{len(report.problems)} problems")
        return 0 if report.ok else 1
    if args.tables_command == "repair":
        report = repair(args.path)
        for rel in report.set_aside:
            print(f"set aside {rel}")
        for rel, rows in report.lost_rows.items():
            print(f"rows no longer in the table from {rel}: {rows}")
        for text in report.unrepaired:
            print(f"NOT REPAIRED {text}")
        return 1 if report.unrepaired else 0
    store = MultimodalStorage(args.path, create=False)
    if args.tables_command == "stats":
        result = store.stats()
    elif args.tables_command == "compact":
        result = store.compact()
    else:
        result = store.vacuum(retention_hours=args.retention_hours)
    print(json.dumps(result, indent=2, default=str))
    return 0
