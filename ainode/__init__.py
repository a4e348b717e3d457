"""The reference AI node shipped with Meridian: hyperdense regions on CT head.

A small DICOM node (``meridian ai-node``) so the hub's AI flow runs end to end
with no outside service: it receives a CT study by C-STORE, waits for the
study to be quiet, runs a deterministic image algorithm, and answers with a
DICOM SR (TID 1500), a GSPS and, if asked, a JSON :class:`engine.ai_result.AIResult`.

Modules, each importable on its own (this one stays light so the CLI can
import it without numpy, highdicom or pynetdicom):

- :mod:`ainode.volume`: CT instances -> HU volumes with geometry.
- :mod:`ainode.algorithm`: the detection itself (``detect``, ``analyse``).
- :mod:`ainode.codes`: the DICOM codes of the SR, for whoever reads it back.
- :mod:`ainode.results`: SR, GSPS and JSON built from an analysis.
- :mod:`ainode.delivery`: C-STORE and HTTP POST of the results, with retries.
- :mod:`ainode.server`: :class:`~ainode.server.AINode`, the Storage SCP.
- :mod:`ainode.cli`: the ``meridian ai-node`` subcommand.

Not a medical device: a reference implementation for integration tests and demos.
"""

from __future__ import annotations

__all__ = ["MODEL_NAME", "__version__"]

# The algorithm's version, reported as the model version (SR TID 4019, JSON
# model_version, SoftwareVersions). Bump it whenever the output for the same
# input changes, so the hub can tell results of different versions apart.
__version__ = "1.0.0"

MODEL_NAME = "meridian-hyperdense"
