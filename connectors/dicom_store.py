"""The Storage SCP (C-STORE) of the hub's DICOM listener and the ``dicom`` channel source.

:class:`StorageService` joins the shared :class:`~connectors.dicom_mwl.DicomListener`
(same AE, same port as the worklist) and accepts every standard storage SOP
class in the common transfer syntaxes, compressed ones included. An instance
is archived *as received*: the encoded data set is written untouched (no
decode, no decompression) behind a file meta header naming the sender.

One listener serves several channels: a C-STORE goes to the channel whose
``ae_title`` it was *called* with (pynetdicom accepts any called AE title as
long as ``require_called_aet`` stays off, its default). A called AE title no
channel serves, or a calling AE title the channel does not allow, is refused
per C-STORE with 0x0124 "Refused: Not authorized" and an Error Comment, so
the same association can still query the worklist.

Statuses (PS3.4 B.2.3, PS3.7 C): 0x0000 only after the file is durably on
disk and indexed; 0xA700 when the disk or the index fails; 0xA900 when the
data set's SOP class is not the one announced; 0xC000 when the data set
cannot be understood (truncated, missing or invalid UIDs). pynetdicom's
``attempt`` boundary is not relied on: every path returns a status, and the
server keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts, build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import PresentationContext

from connectors.base import InboundHandler, Origin
from connectors.dicom_common import failure_status
from connectors.dicom_mwl import AETitle
from engine.archive import Archive, ChannelPolicy, Stored
from engine.dicom_instance import InstanceHeader, file_head, read_instance
from engine.errors import ConfigError, MessageError, ParseError, StoreError
from engine.leadership import JobLeadership
from engine.study_assembly import Dispatch, StudyAssembler
from engine.study_batch import StudyBatch

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATA_SET_MISMATCH",
    "NOT_AUTHORIZED",
    "OUT_OF_RESOURCES",
    "STORAGE_TRANSFER_SYNTAXES",
    "DicomSource",
    "DicomSourceConfig",
    "IngestServices",
    "StorageService",
    "StorageTarget",
]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

# When a sender offers several, pynetdicom's acceptor takes the first of *this*
# list it also offered: lossless compression first (an image already
# compressed stays as it is), then uncompressed, lossy last, so the hub never
# makes a modality compress lossily.
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = tuple(
    UID(uid)
    for uid in (
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (process 14)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless (process 14)
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.5",  # RLE Lossless
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
        "1.2.840.10008.1.2.4.101",  # MPEG2 MP@HL
        "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
        "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD HP@4.1
        "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main
        "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10
    )
)


@dataclass(frozen=True, slots=True)
class StorageTarget:
    """Where C-STOREs called with one AE title go: a channel and who may send to it."""

    policy: ChannelPolicy
    allowed_calling_aets: frozenset[str] | None = None


class StorageService:
    """Storage SCP: archives each C-STORE for the channel its called AE title names."""

    def __init__(
        self,
        archive: Archive,
        *,
        sop_classes: Sequence[str] | None = None,
        transfer_syntaxes: Sequence[str] = STORAGE_TRANSFER_SYNTAXES,
    ) -> None:
        self._archive = archive
        default = [context.abstract_syntax for context in AllStoragePresentationContexts]
        self._sop_classes = [UID(uid) for uid in (sop_classes or default) if uid is not None]
        self._transfer_syntaxes: list[str | UID] = [UID(uid) for uid in transfer_syntaxes]
        self._targets: dict[str, StorageTarget] = {}
        self._lock = threading.Lock()

    # -- DicomService --------------------------------------------------------------

    def contexts(self) -> Sequence[PresentationContext]:
        """Every storage SOP class, each with every supported transfer syntax."""
        return [build_context(uid, self._transfer_syntaxes) for uid in self._sop_classes]

    def handlers(self) -> Sequence[EventHandlerType]:
        """The C-STORE handler."""
        return [(evt.EVT_C_STORE, self.on_store)]

    # -- channels ------------------------------------------------------------------

    def register(self, ae_title: str, target: StorageTarget) -> None:
        """Send C-STOREs called ``ae_title`` to ``target``; one channel per AE title."""
        title = ae_title.strip()
        with self._lock:
            current = self._targets.get(title)
            if current is not None and current != target:
                raise ConfigError(
                    f"AE title {title} is already served by channel {current.policy.channel}"
                )
            # Copy on write: association threads read the dict without the lock.
            self._targets = {**self._targets, title: target}

    def unregister(self, ae_title: str) -> None:
        """Stop accepting C-STOREs called ``ae_title`` (later ones are refused)."""
        with self._lock:
            self._targets = {k: v for k, v in self._targets.items() if k != ae_title.strip()}

    @property
    def ae_titles(self) -> list[str]:
        """The AE titles served, sorted."""
        return sorted(self._targets)

    # -- C-STORE -------------------------------------------------------------------

    def on_store(self, event: Event) -> int | Dataset:
        """Archive one instance; never raises (a failure is a status with a comment)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        called = _called_ae(event)
        target = self._targets.get(called)
        if target is None:
            log.warning("C-STORE from %s refused: no channel serves AE %s", calling, called)
            return failure_status(NOT_AUTHORIZED, f"no channel serves called AE {called}")
        allowed = target.allowed_calling_aets
        if allowed is not None and calling not in allowed:
            log.warning("C-STORE from %s to %s refused: calling AE not allowed", calling, called)
            return failure_status(NOT_AUTHORIZED, "refused: calling AE not allowed")
        try:
            return self._store(event, calling, called, target.policy)
        except Exception as exc:  # the server must outlive any bug in here
            log.exception("C-STORE from %s to %s failed", calling, called)
            return failure_status(CANNOT_UNDERSTAND, f"unable to process: {type(exc).__name__}")

    def _store(
        self, event: Event, calling: str, called: str, policy: ChannelPolicy
    ) -> int | Dataset:
        try:
            data, header = _received(event, calling)
        except MessageError as exc:
            log.warning("C-STORE from %s to %s refused: %s", calling, called, exc.reason)
            return failure_status(CANNOT_UNDERSTAND, exc.reason)
        mismatch = _mismatch(event, header)
        if mismatch is not None:
            log.warning("C-STORE from %s to %s refused: %s", calling, called, mismatch[1])
            return failure_status(*mismatch)
        try:
            outcome = self._archive.store(
                data, header, calling_aet=calling, called_aet=called, policy=policy
            )
        except StoreError as exc:
            log.error("C-STORE from %s to %s: %s", calling, called, exc)
            return failure_status(OUT_OF_RESOURCES, "archive unavailable; resend later")
        if outcome is Stored.DUPLICATE:
            log.info("C-STORE from %s to %s: duplicate instance ignored", calling, called)
        else:
            log.debug("C-STORE from %s to %s: %s", calling, called, outcome)
        return SUCCESS


def _called_ae(event: Event) -> str:
    """The AE title the peer called (the listener's own title is only the default)."""
    primitive = event.assoc.requestor.primitive
    title = getattr(primitive, "called_ae_title", None) or event.assoc.acceptor.ae_title
    return str(title).strip()


def _received(event: Event, calling: str) -> tuple[list[bytes | memoryview], InstanceHeader]:
    """The Part 10 file to write, as (head, data set as received), and what the index needs."""
    request = cast(C_STORE, event.request)
    # A view of pynetdicom's receive buffer: half a megabyte not copied per image.
    dataset = request.DataSet
    if not isinstance(dataset, BytesIO):
        raise ParseError("no data set in the request")
    encoded = dataset.getbuffer()
    syntax = str(event.context.transfer_syntax)
    head = file_head(
        str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID), syntax, calling
    )
    return [head, encoded], read_instance(encoded, syntax)


def _mismatch(event: Event, header: InstanceHeader) -> tuple[int, str] | None:
    """Status and reason if the data set is not the instance the request announced."""
    request = cast(C_STORE, event.request)
    if str(request.AffectedSOPClassUID) != header.sop_class_uid:
        return DATA_SET_MISMATCH, "SOP Class UID differs from the request's"
    if str(request.AffectedSOPInstanceUID) != header.sop_instance_uid:
        return CANNOT_UNDERSTAND, "SOP Instance UID differs from the request's"
    return None


# -- the ``dicom`` channel source ------------------------------------------------------


class DicomSourceConfig(BaseModel):
    """A ``dicom`` source in a channel file: images C-STOREd to the hub's listener."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dicom"]
    ae_title: AETitle = Field(default="MERIDIAN", description="the called AE title it answers")
    quiet_period_seconds: float = Field(
        default=10, gt=0, description="a study is complete after this long without an instance"
    )
    group_by: Literal["study", "series"] = "study"
    duplicates: Literal["ignore", "overwrite"] = Field(
        default="ignore", description="a resent SOP Instance UID: keep the first, or replace it"
    )
    allowed_calling_aets: list[AETitle] | None = Field(
        default=None, min_length=1, description="calling AE titles allowed; null allows any"
    )


class IngestServices(Protocol):
    """What a :class:`DicomSource` needs from the hub's services."""

    @property
    def storage(self) -> StorageService: ...

    @property
    def archive(self) -> Archive: ...

    @property
    def leadership(self) -> JobLeadership | None: ...


AssemblerFactory = Callable[[Archive, str, float, Dispatch], StudyAssembler]


class DicomSource:
    """A channel's image ingest: registers its AE title, hands on each assembled batch.

    Each completed batch goes to the channel's handler as the JSON of a
    :class:`~engine.study_batch.StudyBatch`, with ``Origin("dicom", calling,
    called)``; it is marked dispatched only after the handler returned.
    """

    def __init__(
        self,
        config: DicomSourceConfig,
        *,
        channel: str,
        storage: StorageService,
        archive: Archive,
        assembler_factory: AssemblerFactory = StudyAssembler,
    ) -> None:
        self.config = config
        self.channel = channel
        self._storage = storage
        self._target = StorageTarget(
            policy=ChannelPolicy(channel, config.group_by, config.duplicates),
            allowed_calling_aets=(
                frozenset(config.allowed_calling_aets) if config.allowed_calling_aets else None
            ),
        )
        self._assembler = assembler_factory(
            archive, channel, config.quiet_period_seconds, self._dispatch
        )
        self._handler: InboundHandler | None = None

    @classmethod
    def from_services(
        cls, config: DicomSourceConfig, services: IngestServices, *, channel: str
    ) -> DicomSource:
        """Build from the hub's services (``services.storage``, ``services.archive``)."""
        source = cls(config, channel=channel, storage=services.storage, archive=services.archive)
        # Several nodes on one store: only the leader closes and dispatches studies.
        source._assembler.leadership = services.leadership
        return source

    async def start(self, handler: InboundHandler) -> None:
        """Accept C-STOREs and start assembling (batches a previous run left go first).

        Raises :class:`ConfigError` if another channel already serves the AE title.
        """
        self._handler = handler
        self._storage.register(self.config.ae_title, self._target)
        await self._assembler.start()
        log.info("dicom source %s: AE %s", self.channel, self.config.ae_title)

    async def stop(self) -> None:
        """Refuse new C-STOREs, then stop after the batch being handed on."""
        self._storage.unregister(self.config.ae_title)
        await self._assembler.stop()

    async def _dispatch(self, batch: StudyBatch) -> None:
        if self._handler is None:
            raise RuntimeError("the dicom source is not started")
        origin = Origin("dicom", batch.calling_aet, batch.called_aet)
        await self._handler(batch.model_dump_json().encode(), origin)
