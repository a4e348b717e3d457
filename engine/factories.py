"""Factories the registry points at: build a connector from its config and the hub's services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom import Dataset

    from connectors.channel import (
        ChannelForward,
        ChannelForwardConfig,
        ChannelSource,
        ChannelSourceConfig,
    )
    from connectors.dicom_mpps import MPPSSource, MPPSSourceConfig
    from connectors.dicom_send import DicomSendConfig, DicomSendDestination
    from connectors.dicom_store import DicomSource, DicomSourceConfig
    from connectors.dicomweb import DicomWebConfig, DicomWebDestination
    from connectors.fhir import FhirConfig, FhirDestination
    from connectors.http_source import HttpSource, HttpSourceConfig
    from connectors.kserve import KServeConfig, KServeDestination
    from connectors.memory import (
        MemoryDestination,
        MemoryDestinationConfig,
        MemorySource,
        MemorySourceConfig,
    )
    from connectors.mllp import MLLPSource, MLLPSourceConfig
    from connectors.mllp_destination import MLLPDestination, MLLPDestinationConfig
    from connectors.prefetch import PrefetchConfig, PrefetchDestination
    from connectors.reading_worklist import (
        ReadingWorklistDestination,
        ReadingWorklistDestinationConfig,
    )
    from connectors.report_builder import ReportBuilder, ReportBuilderConfig
    from connectors.worklist import WorklistDestination, WorklistDestinationConfig
    from engine.config import DestinationFile
    from engine.services import Services

__all__ = ["memory_destination", "memory_source", "mllp_source", "worklist_destination"]


def mllp_source(config: MLLPSourceConfig, services: Services, *, channel: str) -> MLLPSource:
    """An MLLP listener."""
    from connectors.mllp import MLLPSource

    return MLLPSource(config)


def memory_source(config: MemorySourceConfig, services: Services, *, channel: str) -> MemorySource:
    """An in-memory source for tests."""
    from connectors.memory import MemorySource

    return MemorySource(config)


def worklist_destination(
    config: WorklistDestinationConfig, services: Services, spec: DestinationFile, *, channel: str
) -> WorklistDestination:
    """The Modality Worklist, in the hub's own store."""
    from connectors.worklist import WorklistDestination

    return WorklistDestination(config, services.worklist)


def memory_destination(
    config: MemoryDestinationConfig, services: Services, spec: DestinationFile, *, channel: str
) -> MemoryDestination:
    """An in-memory destination for tests."""
    from connectors.memory import MemoryDestination

    return MemoryDestination(config)


def channel_destination(
    config: ChannelForwardConfig, services: Services, spec: DestinationFile, *, channel: str
) -> ChannelForward:
    """Forwarding to another channel of this hub (looked up at send time)."""
    from connectors.channel import ChannelForward

    def resolve(name: str) -> Any:
        runtime = services.channels.get(name)
        return runtime.handle if runtime is not None else None

    return ChannelForward(config, resolve, from_channel=channel)


def dicom_source(config: DicomSourceConfig, services: Services, *, channel: str) -> DicomSource:
    """Images C-STOREd to the hub's listener, assembled into studies."""
    from connectors.dicom_store import DicomSource

    return DicomSource.from_services(config, services, channel=channel)


def _prepare_instance(
    services: Services, spec: DestinationFile, channel: str
) -> Callable[[Dataset], Dataset] | None:
    """De-identification for a destination marked ``external`` (else images go as they are)."""
    if not spec.external:
        return None
    scope = f"{channel}/{spec.name}"

    def deidentify(ds: Dataset) -> Dataset:
        return services.deid.deidentify(ds, destination=scope)

    return deidentify


def dicom_destination(
    config: DicomSendConfig, services: Services, spec: DestinationFile, *, channel: str
) -> DicomSendDestination:
    """C-STORE to a DICOM node (PACS, AI node), de-identified when external."""
    from connectors.dicom_send import DicomSendDestination

    prepare = _prepare_instance(services, spec, channel)
    return DicomSendDestination(config, prepare_instance=prepare)


def dicomweb_destination(
    config: DicomWebConfig, services: Services, spec: DestinationFile, *, channel: str
) -> DicomWebDestination:
    """STOW-RS to a DICOMweb service, de-identified when external."""
    from connectors.dicomweb import DicomWebDestination

    prepare = _prepare_instance(services, spec, channel)
    return DicomWebDestination(config, prepare_instance=prepare)


def prefetch_destination(
    config: PrefetchConfig, services: Services, spec: DestinationFile, *, channel: str
) -> PrefetchDestination:
    """Prior studies C-MOVEd from the PACS when an order arrives."""
    from connectors.prefetch import PrefetchDestination

    return PrefetchDestination(config)


def kserve_destination(
    config: KServeConfig, services: Services, spec: DestinationFile, *, channel: str
) -> KServeDestination:
    """A model served with the KServe v2 / Triton protocol; results go to ``results_channel``."""
    from connectors.kserve import KServeDestination
    from engine.errors import ConfigError

    if spec.ai is None:
        raise ConfigError(f"destination {spec.name}: type kserve needs an 'ai:' block")
    forward = _channel_forwarder(services, config.results_channel, f"{channel}/{spec.name}")
    return KServeDestination(
        config, model_name=spec.ai.model, model_version=spec.ai.version, forward=forward
    )


def reading_worklist_destination(
    config: ReadingWorklistDestinationConfig,
    services: Services,
    spec: DestinationFile,
    *,
    channel: str,
) -> ReadingWorklistDestination:
    """The radiologists' reading worklist: completed studies or AI results."""
    from connectors.reading_worklist import ReadingWorklistDestination

    return ReadingWorklistDestination(
        config,
        reading_worklist=services.reading_worklist,
        worklist_store=services.worklist,
        models=services.ai_models,
        channel=channel,
        destination=spec.name,
    )


def http_source(config: HttpSourceConfig, services: Services, *, channel: str) -> HttpSource:
    """AI results POSTed as JSON (callbacks)."""
    from connectors.http_source import HttpSource

    return HttpSource(config)


def _channel_forwarder(
    services: Services, target: str, sender: str
) -> Callable[[bytes], Awaitable[bytes | None]]:
    """Hands a payload to channel ``target`` (looked up per send: deploy order is free)."""
    from connectors.base import Origin
    from engine.errors import RecoverableError

    origin = Origin("channel", sender, target)

    async def forward(raw: bytes) -> bytes | None:
        runtime = services.channels.get(target)
        if runtime is None:
            raise RecoverableError(f"channel {target} is not deployed")
        reply: bytes | None = await runtime.handle(raw, origin)
        return reply

    return forward


def report_destination(
    config: ReportBuilderConfig, services: Services, spec: DestinationFile, *, channel: str
) -> ReportBuilder:
    """Preliminary reports drafted from AI results, handed to the EHR channel."""
    from connectors.report_builder import ReportBuilder

    forward = _channel_forwarder(services, config.report_channel, f"{channel}/{spec.name}")
    return ReportBuilder(config, worklist=services.worklist, forward=forward)


def channel_source(
    config: ChannelSourceConfig, services: Services, *, channel: str
) -> ChannelSource:
    """A channel fed by other channels only."""
    from connectors.channel import ChannelSource

    return ChannelSource(config)


def fhir_destination(
    config: FhirConfig, services: Services, spec: DestinationFile, *, channel: str
) -> FhirDestination:
    """FHIR R4 transactions to the EHR (DiagnosticReport, Observations, ImagingStudy)."""
    from connectors.fhir import FhirDestination

    return FhirDestination(config)


def mllp_destination(
    config: MLLPDestinationConfig, services: Services, spec: DestinationFile, *, channel: str
) -> MLLPDestination:
    """An HL7 v2 receiver (an EHR) over MLLP; its ACK decides delivered or refused."""
    from connectors.mllp_destination import MLLPDestination

    return MLLPDestination(config)


def mpps_source(config: MPPSSourceConfig, services: Services, *, channel: str) -> MPPSSource:
    """Procedure steps (MPPS) reported to the hub's listener."""
    from connectors.dicom_mpps import MPPSSource

    return MPPSSource.from_services(config, services, channel=channel)
