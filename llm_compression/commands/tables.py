"""`llm-compression storage {verify,repair,stats,compact} PATH`: maintain an embedding store."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "storage",
        help="check, repair, describe or compact an embedding store",
        description="Maintain a MultimodalStorage embedding store (docs/storage.md).",
    )
    sub = parser.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    actions = {
        "verify": "check every fragment of the live version (exit 1 when damaged)",
        "repair": "remove temp files and fragments a crash or compaction left unreferenced",
        "stats": "print rows, fragments and bytes per table as JSON",
        "compact": "rewrite fragments into fewer and drop deleted rows",
    }
    for name, text in actions.items():
        action = sub.add_parser(name, help=text, description=text)
        action.add_argument("path", help="the store directory")
        if name == "repair":
            action.add_argument(
                "--drop-corrupt",
                action="store_true",
                help="also commit a version without damaged fragments (their rows are lost)",
            )
        action.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..storage import MultimodalStorage, repair, verify

    if args.storage_command == "verify":
        report = verify(args.path)
        print(f"store {args.path}: version {report.version}, {report.fragments} fragments, "
              f"{report.rows} rows")  # fmt: skip
        for problem in report.problems:
            print(f"DAMAGED {problem}")
        for orphan in report.orphans + report.temp_files:
            print(f"leftover {orphan} (remove with `llm-compression storage repair {args.path}`)")
        print("ok" if report.ok else f"{len(report.problems)} problems")
        return 0 if report.ok else 1
    if args.storage_command == "repair":
        report = repair(args.path, drop_corrupt=args.drop_corrupt)
        for rel in report.removed:
            print(f"removed {rel}")
        for rel in report.manifests_set_aside:
            print(f"set aside damaged manifest {rel}")
        for rel in report.dropped_fragments:
            print(f"dropped damaged fragment {rel} (its rows are gone)")
        print(f"store {args.path}: version {report.version}")
        return 0
    store = MultimodalStorage(args.path, create=False)
    result = store.stats() if args.storage_command == "stats" else store.compact()
    print(json.dumps(result, indent=2))
    return 0
