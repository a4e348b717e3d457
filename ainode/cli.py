"""``meridian ai-node``: run the reference AI node in the foreground until SIGINT or SIGTERM.

Wired into ``engine.cli`` with :func:`add_arguments` (which also sets
``func=run``); ``python -m ainode.cli`` runs it on its own. Imports here stay
light: the heavy modules load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from engine.errors import ConfigError, ConnectorError

__all__ = ["add_arguments", "main", "run"]

log = logging.getLogger("meridian.ai-node")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options; sets ``func`` to :func:`run`."""
    parser.add_argument("--port", type=int, default=11113, help="DICOM port (11113; 0 = any)")
    parser.add_argument("--ae-title", default="AI_NODE", help="this node's AE title (AI_NODE)")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--results-host", default="127.0.0.1", help="where SR/GSPS go")
    parser.add_argument("--results-port", type=int, default=11112, help="results port (11112)")
    parser.add_argument("--results-ae", default="MERIDIAN_AI", help="results AE (MERIDIAN_AI)")
    parser.add_argument("--callback-url", default=None, help="also POST the JSON result here")
    parser.add_argument(
        "--quiet-seconds", type=float, default=2.0, help="a study is complete after this (2)"
    )
    parser.add_argument(
        "--delay-seconds", type=float, default=0.0, help="wait before answering (a slow AI)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the node, wait for SIGINT/SIGTERM, stop it; 0 on a clean stop."""
    from pydantic import ValidationError

    from ainode.server import AINode, AINodeConfig

    try:
        config = AINodeConfig(
            ae_title=args.ae_title,
            bind_address=args.bind,
            port=args.port,
            results_host=args.results_host,
            results_port=args.results_port,
            results_ae=args.results_ae,
            callback_url=args.callback_url,
            quiet_seconds=args.quiet_seconds,
            delay_seconds=args.delay_seconds,
        )
    except ValidationError as exc:
        raise ConfigError(f"ai-node: {exc}") from exc
    _quiet_pydicom()
    # pynetdicom logs every C-STORE at INFO: hundreds of lines per study.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        node = AINode(config).start()
    except OSError as exc:
        reason = f"ai-node cannot listen on port {config.port}: {exc.strerror}"
        raise ConnectorError(reason) from exc
    try:
        log.info("ready; Ctrl-C or SIGTERM stops the AI node")
        while not stop.wait(1.0):
            pass
        log.info("stopping")
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _quiet_pydicom() -> None:
    """Keep pydicom from logging the values it finds invalid: they may be PHI."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


def main(argv: list[str] | None = None) -> int:
    """``python -m ainode.cli``: the same command without the rest of ``meridian``."""
    parser = argparse.ArgumentParser(
        prog="meridian ai-node", description="Run the reference AI node (CT head hyperdensities)."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
    except (ConfigError, ConnectorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
