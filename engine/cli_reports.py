"""``meridian audit`` and ``meridian reading-worklist``: read-only views of a hub's store."""

from __future__ import annotations

import argparse

from engine.audit import format_events, query
from engine.cli_store import add_store_arguments, store_settings
from engine.reading_worklist import ReadingWorklist
from engine.store.db import open_engine

__all__ = ["add_report_commands"]


def add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the report subcommands on the ``meridian`` parser."""
    audit = sub.add_parser("audit", help="show the audit trail (routing, AI, worklist)")
    add_store_arguments(audit)
    audit.add_argument("--study", help="Study Instance UID")
    audit.add_argument("--accession", help="accession number")
    audit.add_argument("--kind", action="append", help="event kind (repeatable)")
    audit.add_argument("--model", help="AI model name")
    audit.add_argument("--limit", type=int, default=500)
    audit.set_defaults(func=_audit)

    reading = sub.add_parser("reading-worklist", help="show the radiologists' reading worklist")
    add_store_arguments(reading)
    reading.add_argument("--limit", type=int, default=50)
    reading.set_defaults(func=_reading_worklist)


def _audit(args: argparse.Namespace) -> int:
    engine = open_engine(store_settings(args).resolved_db_url(), create_schema=False)
    try:
        events = query(
            engine,
            study_instance_uid=args.study,
            accession_number=args.accession,
            kind=args.kind,
            model=args.model,
            limit=args.limit,
        )
        print(format_events(events))
    finally:
        engine.dispose()
    return 0


def _reading_worklist(args: argparse.Namespace) -> int:
    settings = store_settings(args)
    engine = open_engine(settings.resolved_db_url(), create_schema=False)
    try:
        worklist = ReadingWorklist(engine, settings.reading_worklist)
        print(f"{'#':>3} {'priority':>10} {'order':<8} {'AI':<9} {'status':<11} "
              f"{'subspecialty':<12} {'suggested':<12} study")  # fmt: skip
        for rank, item in enumerate(worklist.items(limit=args.limit), start=1):
            ai = (
                "CRITICAL"
                if item.ai_critical
                else (f"{item.ai_score:.2f}" if item.ai_score else "-")
            )
            suggested = worklist.suggest_assignee(item) or "-"
            print(
                f"{rank:>3} {item.priority_score:>10.0f} {item.order_priority:<8} {ai:<9} "
                f"{item.status:<11} {item.subspecialty or '-':<12} {suggested:<12} "
                f"{item.study_instance_uid}"
            )
    finally:
        engine.dispose()
    return 0
