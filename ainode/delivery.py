"""Sending results back: C-STORE of the SR/GSPS to the hub, HTTP POST of the JSON, with retries.

Errors are the engine's: an unreachable or busy peer is a
:class:`~engine.errors.RecoverableError` (retried with exponential backoff),
a refusal is a :class:`~engine.errors.PermanentError` (not retried). The
association plumbing (timeouts, TCP tuning, rejection reasons) is the hub's
own :func:`connectors.dicom_scu.open_association`. Logs carry addresses, AE
titles, statuses and UIDs only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import httpx
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context

from connectors.dicom_scu import Peer, StatusKind, classify_status, lost, open_association
from engine.ai_result import AIResult
from engine.errors import ConnectorError, PermanentError, RecoverableError

__all__ = ["post_result", "store_results", "with_retries"]

log = logging.getLogger(__name__)


def store_results(peer: Peer, datasets: Sequence[Dataset]) -> None:
    """C-STORE ``datasets`` over one association; raises on any instance not stored."""
    sop_classes = list(dict.fromkeys(str(ds.SOPClassUID) for ds in datasets))
    contexts = [
        build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for uid in sop_classes
    ]
    with open_association(peer, contexts) as assoc:
        for ds in datasets:
            response = assoc.send_c_store(ds)
            if "Status" not in response:  # no answer: aborted, timed out, connection lost
                raise lost(peer, "C-STORE")
            status = int(response.Status)
            kind = classify_status(status)
            if kind == StatusKind.RECOVERABLE:
                raise RecoverableError(f"{peer} is out of resources (0x{status:04X})")
            if kind not in (StatusKind.SUCCESS, StatusKind.WARNING):
                raise PermanentError(
                    f"{peer} refused instance {ds.SOPInstanceUID} (0x{status:04X})"
                )


def post_result(url: str, result: AIResult, *, timeout: float = 10.0) -> None:
    """POST the JSON result; 5xx and transport errors are recoverable, other non-2xx not."""
    body = result.model_dump_json()
    try:
        response = httpx.post(
            url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise RecoverableError(f"POST to the callback failed: {type(exc).__name__}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise RecoverableError(f"the callback answered HTTP {response.status_code}")
    if not response.is_success:
        raise PermanentError(f"the callback answered HTTP {response.status_code}")


def with_retries(
    action: Callable[[], None],
    *,
    what: str,
    attempts: int,
    backoff: float,
    stopping: threading.Event,
) -> bool:
    """Run ``action`` until it succeeds, up to ``attempts`` times; False (logged) if it never did.

    Waits ``backoff``, then twice as long, and so on between attempts; a
    permanent error ends at once, and so does ``stopping`` being set.
    """
    for attempt in range(1, attempts + 1):
        try:
            action()
            return True
        except PermanentError as exc:
            log.error("%s failed, not retried: %s", what, exc)
            return False
        except ConnectorError as exc:
            if attempt == attempts:
                log.error("%s failed after %d attempt(s): %s", what, attempts, exc)
                return False
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1f s",
                what, attempt, attempts, exc, delay,
            )  # fmt: skip
            if stopping.wait(delay):
                log.error("%s abandoned: the node is stopping", what)
                return False
    return False
