"""``meridian user add NAME --role ROLE``: create an admin API user from the command line.

The password is read with ``getpass`` (twice, so a typo does not lock you
out) or, for scripts, from the first line of standard input with
``--password-stdin``; it is never a command-line argument, which other local
users could read in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TextIO

from admin.users import ROLES, add_user, ensure_tables
from engine.cli_store import add_store_arguments, store_settings
from engine.errors import ConfigError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``user`` subcommands to ``parser`` (the ``meridian user`` parser)."""
    actions = parser.add_subparsers(dest="user_command", required=True)
    add = actions.add_parser("add", help="create a user of the admin API")
    add.add_argument("name", help="username")
    add.add_argument("--role", required=True, choices=ROLES)
    phi = add.add_mutually_exclusive_group()
    phi.add_argument(
        "--phi", dest="can_view_phi", action="store_true", default=None, help="may see PHI"
    )
    phi.add_argument("--no-phi", dest="can_view_phi", action="store_false", help="may not")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add_store_arguments(add)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    """Create the user; 0 on success (errors surface as ConfigError, exit status 2)."""
    from engine.store.db import open_engine

    password = _read_password(stdin or sys.stdin) if args.password_stdin else _ask_password()
    engine = open_engine(store_settings(args).resolved_db_url())
    try:
        ensure_tables(engine)
        user = add_user(engine, args.name, password, args.role, args.can_view_phi)
    finally:
        engine.dispose()
    phi = "with" if user.can_view_phi else "without"
    print(f"user {user.username} created: role {user.role}, {phi} PHI access")
    return 0


def _read_password(stream: TextIO) -> str:
    return stream.readline().rstrip("\r\n")


def _ask_password() -> str:
    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise ConfigError("the passwords differ")
    return password
