"""The ``meridian`` command: serve, check, send."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from engine.config import Channel, HubSettings, load_settings_file, validate_settings
from engine.errors import ConfigError, EngineError
from engine.log_masking import install as install_phi_masking

__all__ = ["main"]

log = logging.getLogger("meridian")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meridian`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The net under "no PHI in our log calls": libraries dump datasets and messages.
    install_phi_masking()
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meridian", description="Meridian imaging interface hub")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub in the foreground")
    _add_location_args(serve)
    serve.add_argument("--data", type=Path, default=None, help="data folder (default ./var)")
    serve.add_argument("--db", default=None, help="store URL (default: SQLite under --data)")
    serve.add_argument("--dicom-port", type=int, default=None, help="DICOM listener port (11112)")
    serve.add_argument("--dicom-aet", default=None, help="hub AE title (MERIDIAN)")
    serve.add_argument("--admin-port", type=int, default=None, help="admin API port (8080)")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check", help="validate every channel file and template")
    _add_location_args(check)
    check.set_defaults(func=_check)

    send = sub.add_parser("send", help="send HL7 files over MLLP and print the ACKs")
    send.add_argument("files", nargs="+", type=Path)
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=2575)
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=_send)

    from ainode.cli import add_arguments as add_ai_node_arguments
    from engine.cli_db import add_db_command
    from engine.cli_reports import add_report_commands
    from engine.demo import add_demo_command

    add_report_commands(sub)
    add_db_command(sub)
    add_demo_command(sub)

    add_ai_node_arguments(sub.add_parser("ai-node", help="run the reference AI node (CT head)"))

    from admin.user_cli import add_arguments as add_user_arguments

    add_user_arguments(sub.add_parser("user", help="manage users of the admin API"))
    return parser


def _add_location_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="hub settings file (see meridian.yaml)"
    )
    parser.add_argument("--channels", type=Path, default=Path("channels"), help="channels folder")
    parser.add_argument(
        "--transforms", type=Path, default=None, help="templates folder (default: ../transforms)"
    )


def _settings(args: argparse.Namespace) -> HubSettings:
    values = load_settings_file(args.config)
    values.update(channels_dir=args.channels, transforms_dir=args.transforms)
    if hasattr(args, "data"):
        # Command-line options win over the settings file.
        if args.data is not None:
            values["data_dir"] = args.data
        if args.db is not None:
            values["db_url"] = args.db
        dicom: dict[str, object] = dict(values.get("dicom") or {})
        if args.dicom_port is not None:
            dicom["port"] = args.dicom_port
        if args.dicom_aet is not None:
            dicom["ae_title"] = args.dicom_aet
        if dicom:
            values["dicom"] = dicom
        if args.admin_port is not None:
            values["admin"] = {**dict(values.get("admin") or {}), "port": args.admin_port}
    return validate_settings(values, str(args.config or "settings"))


def _check(args: argparse.Namespace) -> int:
    from engine.checks import check_all

    problems = check_all(_settings(args))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print("all channels and templates are valid")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from engine.checks import load_and_check

    settings = _settings(args)
    _quiet_pydicom()
    channels = load_and_check(settings)
    asyncio.run(_run_until_signalled(settings, channels))
    return 0


async def _run_until_signalled(settings: HubSettings, channels: list[Channel]) -> None:
    from engine.hub import Hub

    hub = Hub(settings, channels)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    log.info("ready; Ctrl-C or SIGTERM stops the hub after in-flight work")
    await stop.wait()
    log.info("stopping")
    await hub.stop()


def _quiet_pydicom() -> None:
    """Keep pydicom from logging the values it finds invalid: they may be PHI."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


def _send(args: argparse.Namespace) -> int:
    from connectors.mllp import send_messages
    from engine.hl7_files import read_messages

    messages = [m for path in args.files for m in read_messages(path)]
    acks = send_messages(args.host, args.port, messages, args.timeout)
    failures = 0
    for ack in acks:
        text = ack.decode("utf-8", errors="replace")
        print(text.replace("\r", "\n").rstrip("\n"))
        print()
        if "MSA|AA" not in text and "MSA|CA" not in text:
            failures += 1
    return 1 if failures else 0
