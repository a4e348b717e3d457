"""Coverage-guided fuzzing of the same target with atheris (libFuzzer), when installed.

Optional and not part of CI (atheris is not a dependency): ``pip install atheris``, then

    .venv/bin/python -m tests.fuzz.atheris_hl7 -atheris_runs=200000 tests/fuzz/corpus

The corpus directory (created if missing) is seeded with the sample messages, framed.
Any exception other than the allowed ones (see tests/fuzz/hl7_fuzz.py) is a crash
that libFuzzer reports with the input that caused it.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from connectors.mllp_framing import encode_frame
    from tests.fuzz.hl7_fuzz import FuzzStats, make_datatype, run_one, sample_messages

DATATYPE = make_datatype(["ORM^O01", "OMI^O23"])


def test_one_input(data: bytes) -> None:
    """One libFuzzer input: a byte stream as a sender would put it on the wire."""
    run_one(DATATYPE, data, random.Random(len(data)), FuzzStats())


def seed_corpus(directory: Path) -> None:
    """Put the framed sample messages in ``directory`` (once)."""
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.iterdir()):
        for n, sample in enumerate(sample_messages()):
            (directory / f"sample{n}").write_bytes(encode_frame(sample))


def main() -> None:
    """Run libFuzzer on :func:`test_one_input`; arguments are libFuzzer's."""
    logging.disable(logging.WARNING)
    corpora = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    for corpus in corpora:
        seed_corpus(corpus)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
