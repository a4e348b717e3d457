"""The EHR side of end-to-end tests: an MLLP receiver that ACKs and a FHIR server."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.support.fhir_server import FhirServer
from tests.support.mllp_receivers import AckReceiver


class EHR:
    """The EHR side: an MLLP receiver that ACKs (on its own event loop) and a FHIR server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.oru = asyncio.run_coroutine_threadsafe(AckReceiver().start(), self.loop).result(10)
        self.fhir = FhirServer()
        self.fhir.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.oru.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.fhir.stop()

    def orus(self) -> list[str]:
        return [m.decode("utf-8") for m in list(self.oru.received)]

    def diagnostic_reports(self, accession: str) -> list[dict[str, Any]]:
        return [r for r in self.fhir.store.all("DiagnosticReport")
                if any(i.get("value") == accession for i in r.get("identifier", []))]  # fmt: skip
