"""The store options every command that opens the store takes: --config, --data, --db."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.config import HubSettings, load_settings_file, validate_settings

__all__ = ["add_store_arguments", "store_settings"]


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--data`` and ``--db`` to ``parser``."""
    parser.add_argument("--config", type=Path, default=None, help="hub settings file")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default ./var)")
    parser.add_argument("--db", default=None, help="store URL (default: SQLite under --data)")


def store_settings(args: argparse.Namespace) -> HubSettings:
    """The hub settings from ``--config``, with ``--data``/``--db`` overriding the file."""
    values = load_settings_file(args.config)
    if args.data is not None:
        values["data_dir"] = args.data
    if args.db is not None:
        values["db_url"] = args.db
    return validate_settings(values, str(args.config or "settings"))
