"""``meridian demo``: the whole mission on one machine, step by step.

Starts the hub with the shipped channels (copied, on free ports), the
reference AI node, stand-ins for the EHR (an MLLP receiver that ACKs and a
FHIR server) and, when installed, Orthanc as the PACS; then sends orders,
queries the worklist, stores a synthetic CT head, and shows the AI triage and
the reports the EHR receives. Every piece of patient data is synthetic.

Modules: :mod:`engine.demo.run` (the command), :mod:`engine.demo.site` (the
processes), :mod:`engine.demo.steps` (what is shown), :mod:`engine.demo.console`
(printing and waiting), :mod:`engine.demo.peers` (EHR stand-ins),
:mod:`engine.demo.synthetic` (orders and images).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_demo_command"]


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``meridian demo`` on the ``meridian`` parser."""
    demo = sub.add_parser(
        "demo", help="run the whole flow on this machine with the reference AI node"
    )
    demo.add_argument("--channels", type=Path, default=Path("channels"), help="channels folder")
    demo.add_argument(
        "--transforms", type=Path, default=None, help="templates folder (default: ../transforms)"
    )
    demo.add_argument(
        "--config",
        type=Path,
        default=None,
        help="hub settings to start from (default: meridian.yaml next to the channels folder)",
    )
    demo.add_argument(
        "--data", type=Path, default=None, help="work folder, kept (default: a temporary one)"
    )
    demo.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    demo.add_argument("--no-pacs", action="store_true", help="do not start Orthanc as the PACS")
    demo.add_argument("--slices", type=int, default=10, help="slices of the CT head (6-64)")
    demo.add_argument(
        "--timeout", type=float, default=60.0, help="longest wait of one step, seconds (60)"
    )

    def run(args: argparse.Namespace) -> int:
        from engine.demo.run import run_demo

        return run_demo(args)

    demo.set_defaults(func=run)
