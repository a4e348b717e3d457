"""``meridian db upgrade|current|check``: the store's schema revision from the command line.

``serve`` upgrades the store by itself at start; these commands let an operator
upgrade before starting the nodes of a cluster, see where a store stands, or
check (exit status 1 on any difference) that it matches this version.
"""

from __future__ import annotations

import argparse

from engine.cli_store import add_store_arguments, store_settings
from engine.store.db import open_engine
from engine.store.migrate import check_store, current_revision, head_revision

__all__ = ["add_db_command"]


def add_db_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``meridian db`` and its actions on the ``meridian`` parser."""
    db = sub.add_parser("db", help="upgrade or inspect the store's schema")
    actions = db.add_subparsers(dest="db_command", required=True)
    for name, func, help_text in (
        ("upgrade", _upgrade, "migrate the store to this version's schema"),
        ("current", _current, "print the store's schema revision"),
        ("check", _check, "exit 1 unless the store matches this version's schema"),
    ):
        action = actions.add_parser(name, help=help_text)
        add_store_arguments(action)
        action.set_defaults(func=func)


def _db_url(args: argparse.Namespace) -> str:
    return store_settings(args).resolved_db_url()


def _upgrade(args: argparse.Namespace) -> int:
    # open_engine runs the upgrade (under the cross-node lock on PostgreSQL).
    open_engine(_db_url(args)).dispose()
    print(f"store at revision {head_revision()} (head)")
    return 0


def _current(args: argparse.Namespace) -> int:
    engine = open_engine(_db_url(args), create_schema=False)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    label = " (head)" if current == head else f" (head is {head})"
    print(f"{current or 'none'}{label}")
    return 0


def _check(args: argparse.Namespace) -> int:
    engine = open_engine(_db_url(args), create_schema=False)
    try:
        problems = check_store(engine)
    finally:
        engine.dispose()
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"store matches schema revision {head_revision()}")
    return 0
