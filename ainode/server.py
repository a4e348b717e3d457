"""The AI node: a Storage SCP that reads each quiet study and sends the results back.

Flow: C-STOREs (CT Image, Enhanced CT) are written to a private temporary
folder, one batch per study. A study is complete once no instance arrived
for ``quiet_seconds`` (Meridian's study-assembly rule, as MONAI Deploy and
Orthanc's "stable study" do); it is then analysed in the one worker thread
(:func:`ainode.algorithm.analyse`), results are built
(:func:`ainode.results.build_results`), the node waits ``delay_seconds`` if
asked (a slow AI, for the hub's timeout tests), C-STOREs the SR and GSPS to
the results peer and, with a ``callback_url``, POSTs the JSON AIResult. If
processing fails, the callback gets a ``status: failed`` result so the hub
need not wait for a timeout.

Instances of a study arriving while that study is being processed start a
new batch (analysed on its own once quiet). At :meth:`AINode.stop`, studies
not yet quiet are dropped (logged), the study in progress finishes. The
listener only answers to its own AE title, accepts only the transfer syntaxes
it can decode, and answers C-ECHO. Logs carry UIDs and counts, never PHI.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from pydicom import Dataset, dcmread
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from ainode import MODEL_NAME, __version__
from ainode.algorithm import Analysis, Params, analyse
from ainode.delivery import post_result, store_results, with_retries
from ainode.results import Results, build_results
from ainode.volume import CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE
from connectors.dicom_common import AETitle, tune_connection
from connectors.dicom_mwl import VERIFICATION
from connectors.dicom_scu import Peer
from engine.ai_result import AIResult

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "AINode", "AINodeConfig"]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _decodable(candidates: tuple[str, ...]) -> list[UID]:
    """The compressed syntaxes pydicom can decode here (it depends on installed plugins)."""
    result = []
    for uid in candidates:
        try:
            if get_decoder(UID(uid)).is_available:
                result.append(UID(uid))
        except NotImplementedError:
            continue
    return result


# Uncompressed first: when a sender offers both, the image arrives ready to read.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID("1.2.840.10008.1.2.1.99"),  # Deflated Explicit VR Little Endian
    UID("1.2.840.10008.1.2.2"),  # Explicit VR Big Endian (retired, still sent)
    *_decodable(
        (
            "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
            "1.2.840.10008.1.2.4.57",  # JPEG Lossless
            "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
            "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
            "1.2.840.10008.1.2.5",  # RLE Lossless
            "1.2.840.10008.1.2.4.50",  # JPEG Baseline
            "1.2.840.10008.1.2.4.51",  # JPEG Extended
            "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
            "1.2.840.10008.1.2.4.91",  # JPEG 2000
        )
    ),
)


class AINodeConfig(BaseModel):
    """Where the node listens, where results go, and its timing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AETitle = "AI_NODE"
    bind_address: str = "0.0.0.0"
    port: int = Field(default=11113, ge=0, le=65535, description="0 = any free port")
    results_host: str = Field(default="127.0.0.1", min_length=1)
    results_port: int = Field(default=11112, ge=1, le=65535)
    results_ae: AETitle = "MERIDIAN_AI"
    callback_url: HttpUrl | None = None
    quiet_seconds: float = Field(default=2.0, gt=0)
    delay_seconds: float = Field(default=0.0, ge=0)
    send_attempts: int = Field(default=3, ge=1)
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0, description="DICOM and HTTP timeouts")


@dataclass
class _Batch:
    """The instances of one study received since it was last handed to the worker."""

    study_uid: str
    directory: Path
    accession: str | None = None
    paths: dict[str, Path] = field(default_factory=dict)  # by SOP Instance UID (resends dedupe)
    last_arrival: float = field(default_factory=time.monotonic)


class AINode:
    """The reference AI node; :meth:`start` listens, :meth:`stop` shuts everything down."""

    def __init__(self, config: AINodeConfig | None = None, *, params: Params | None = None) -> None:
        self.config = config or AINodeConfig()
        self.params = params or Params()
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._in_flight = 0
        self._processed = 0
        self._stopping = threading.Event()
        self._server: ThreadedAssociationServer | None = None
        self._watcher: threading.Thread | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._workdir: Path | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> AINode:
        """Listen for C-STOREs; returns once the port is bound."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._workdir = Path(tempfile.mkdtemp(prefix="meridian-ai-node-"))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ai-node-worker")
        self._watcher = threading.Thread(
            target=self._watch, args=(self._worker,), name="ai-node-watcher", daemon=True
        )
        self._watcher.start()
        try:
            self._server = self._ae().start_server(
                (self.config.bind_address, self.config.port),
                block=False,
                evt_handlers=[
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_CONN_OPEN, tune_connection),
                ],
            )
        except OSError:  # port taken, address not ours: undo what was started
            self._shutdown()
            raise
        log.info(
            "AI node %s (%s %s) listening on port %d; results to %s@%s:%d%s",
            self.config.ae_title, MODEL_NAME, __version__, self.bound_port,
            self.config.results_ae, self.config.results_host, self.config.results_port,
            ", JSON to the callback URL" if self.config.callback_url else "",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop listening, drop studies not yet quiet, let the study in progress finish."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        self._shutdown()
        log.info("AI node stopped after %d study(ies)", self._processed)

    def _shutdown(self) -> None:
        """Stop the watcher and the worker (after its current study), delete the files."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            dropped, self._batches = len(self._batches), {}
        if dropped:
            log.warning("stopping: %d study(ies) still receiving dropped", dropped)
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._watcher = self._worker = self._workdir = None

    @property
    def bound_port(self) -> int:
        """The port listened on (the one the OS chose when configured with 0)."""
        if self._server is None:
            raise RuntimeError("the AI node is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def processed(self) -> int:
        """Studies (batches) fully handled so far, results sent or not."""
        return self._processed

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is being received or processed; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._batches and self._in_flight == 0:
                    return True
            time.sleep(0.05)
        return False

    def _ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True  # a C-STORE meant for another node is refused, not analysed
        for sop_class in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE):
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        ae.network_timeout = self.config.timeout_seconds
        ae.dimse_timeout = self.config.timeout_seconds
        ae.acse_timeout = self.config.timeout_seconds
        return ae

    # -- receiving -----------------------------------------------------------------

    def _on_store(self, event: Event) -> int:
        """Keep one instance for its study; never raises (failures are statuses)."""
        workdir = self._workdir
        if self._stopping.is_set() or workdir is None:
            return OUT_OF_RESOURCES
        try:
            ds: Dataset = event.dataset
            study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            accession = str(ds.get("AccessionNumber") or "") or None
        except Exception as exc:  # a data set pydicom cannot parse
            log.warning("C-STORE refused: unreadable data set (%s)", type(exc).__name__)
            return CANNOT_UNDERSTAND
        if not (_UID.match(study_uid) and _UID.match(sop_uid)):
            log.warning("C-STORE refused: missing or invalid Study or SOP Instance UID")
            return CANNOT_UNDERSTAND
        try:
            self._keep(workdir, event.encoded_dataset(), study_uid, sop_uid, accession)
        except OSError as exc:
            log.error("C-STORE of study %s failed: %s", study_uid, type(exc).__name__)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _keep(
        self, workdir: Path, data: bytes, study_uid: str, sop_uid: str, accession: str | None
    ) -> None:
        """Write the instance, then move it into its study's batch (a rename, under the lock)."""
        staging = workdir / f"{uuid.uuid4().hex}.part"
        staging.write_bytes(data)
        with self._lock:
            batch = self._batches.get(study_uid)
            if batch is None:
                directory = workdir / uuid.uuid4().hex
                directory.mkdir()
                batch = self._batches[study_uid] = _Batch(study_uid, directory, accession)
            path = batch.directory / f"{sop_uid}.dcm"
            staging.replace(path)
            batch.paths[sop_uid] = path
            batch.last_arrival = time.monotonic()

    def _watch(self, worker: ThreadPoolExecutor) -> None:
        """Hand each study that has been quiet for the quiet period to the worker."""
        poll = min(0.1, self.config.quiet_seconds / 4)
        while not self._stopping.wait(poll):
            now = time.monotonic()
            with self._lock:
                quiet = [
                    batch for batch in self._batches.values()
                    if now - batch.last_arrival >= self.config.quiet_seconds
                ]  # fmt: skip
                for batch in quiet:
                    del self._batches[batch.study_uid]
                    self._in_flight += 1
            for batch in quiet:
                worker.submit(self._process, batch)

    # -- processing ----------------------------------------------------------------

    def _process(self, batch: _Batch) -> None:
        """Analyse one study and send its results; never raises (the worker must survive)."""
        try:
            log.info("study %s: %d instance(s) received, analysing", batch.study_uid,
                     len(batch.paths))  # fmt: skip
            results = self._analyse(batch)
            if self.config.delay_seconds and self._stopping.wait(self.config.delay_seconds):
                log.warning("study %s: stopping during the delay; results not sent",
                            batch.study_uid)  # fmt: skip
                return
            if results is not None:
                self._send(batch.study_uid, results)
        finally:
            shutil.rmtree(batch.directory, ignore_errors=True)
            with self._lock:
                self._in_flight -= 1
                self._processed += 1

    def _analyse(self, batch: _Batch) -> Results | None:
        """The results of one study, or None (logged, failure posted) if it could not be read."""
        try:
            datasets = [dcmread(path) for _, path in sorted(batch.paths.items())]
            analysis = analyse(datasets, self.params)
            _log_analysis(batch.study_uid, analysis)
            return build_results(analysis, datasets, params=self.params)
        except Exception as exc:  # decoding, geometry, highdicom checks: types only, no values
            log.error("study %s: processing failed (%s)", batch.study_uid, type(exc).__name__)
            self._post(batch.study_uid, _failed(batch))
            return None

    def _send(self, study_uid: str, results: Results) -> None:
        config = self.config
        peer = Peer(
            host=config.results_host, port=config.results_port, called_ae=config.results_ae,
            calling_ae=config.ae_title, timeout=config.timeout_seconds, max_pdu=0,
        )  # fmt: skip
        sent = with_retries(
            lambda: store_results(peer, results.dicom),
            what=f"study {study_uid}: C-STORE of {len(results.dicom)} result(s) to {peer}",
            attempts=config.send_attempts,
            backoff=config.retry_backoff_seconds,
            stopping=self._stopping,
        )
        if sent:
            log.info("study %s: SR and %d GSPS stored to %s", study_uid, len(results.gsps), peer)
        self._post(study_uid, results.ai_result)

    def _post(self, study_uid: str, result: AIResult) -> None:
        url = self.config.callback_url
        if url is None:
            return
        posted = with_retries(
            lambda: post_result(str(url), result, timeout=self.config.timeout_seconds),
            what=f"study {study_uid}: POST of the JSON result",
            attempts=self.config.send_attempts,
            backoff=self.config.retry_backoff_seconds,
            stopping=self._stopping,
        )
        if posted:
            log.info("study %s: JSON result posted (%s)", study_uid, result.status)


def _log_analysis(study_uid: str, analysis: Analysis) -> None:
    if not analysis.applicable:
        log.info("study %s: not analysed (%s)", study_uid, analysis.reason)
        return
    for reason in analysis.skipped:
        log.warning("study %s: %s", study_uid, reason)
    critical = sum(finding.critical for finding in analysis.findings)
    log.info(
        "study %s: %d volume(s) analysed, %d finding(s), %d critical",
        study_uid, analysis.volumes_analysed, len(analysis.findings), critical,
    )  # fmt: skip


def _failed(batch: _Batch) -> AIResult:
    return AIResult(
        study_instance_uid=batch.study_uid,
        accession_number=batch.accession,
        model=MODEL_NAME,
        model_version=__version__,
        status="failed",
        produced_at=datetime.now(UTC),
        source="json",
    )
