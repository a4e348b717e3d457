"""Data types of channels: how a channel reads what its source hands it and what it answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import Channel
    from engine.datatypes.base import DataType
    from engine.services import Services

__all__ = ["datatype_for"]


def datatype_for(channel: Channel, services: Services) -> DataType:
    """The data type a channel's ``inbound.data_type`` names."""
    if channel.file.inbound.data_type == "dicom-study":
        return _study_datatype(channel, services)
    if channel.file.inbound.data_type == "ai-results":
        return _ai_results_datatype(channel, services)
    if channel.file.inbound.data_type == "procedure-step":
        from engine.datatypes.procedure_step import ProcedureStepDataType

        return ProcedureStepDataType(channel.name)
    if channel.file.inbound.data_type == "report":
        from engine.datatypes.report import ReportDataType

        return ReportDataType(channel.name)
    from engine.datatypes.hl7v2 import HL7v2DataType

    return HL7v2DataType(channel.name, channel.file.inbound)


def _study_datatype(channel: Channel, services: Services) -> DataType:
    from engine.datatypes.dicom_study import StudyDataType
    from engine.normalize import Normalizer

    config = channel.file.normalize
    normalizer = (
        Normalizer(config, services.templates, services.worklist) if config is not None else None
    )
    normalized_root = services.settings.data_dir.resolve() / "normalized" / channel.name
    return StudyDataType(channel.name, normalizer, normalized_root)


def _ai_results_datatype(channel: Channel, services: Services) -> DataType:
    from engine.datatypes.ai_results import AIResultsDataType

    return AIResultsDataType(
        channel.name,
        deid=services.deid,
        reidentify_scopes=channel.file.inbound.reidentify_scopes,
        output_root=services.settings.data_dir.resolve() / "ai-results" / channel.name,
        modes={name: model.mode for name, model in services.ai_models.items()},
    )
