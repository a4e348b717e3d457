"""The contract between image ingest, the pipeline and image destinations: one study batch.

When a study has been quiet for its channel's quiet period, the assembler
hands the channel a :class:`StudyBatch` (as JSON) naming the instances that
arrived since the previous batch of that study (batch 1 = the study as first
completed; later batches = late instances, a follow-up). After normalization
the batch's ``instances`` point at the normalized copies and ``metadata``
holds the study-level attributes routing rules look at.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["METADATA_KEYWORDS", "InstanceRef", "StudyBatch", "metadata_text"]

#: Study-level attributes a batch's ``metadata`` carries (plain strings, '' when
#: absent), read from its first instance: what routing rules look at.
METADATA_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
    "PatientID",
    "StationName",
    "InstitutionName",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def metadata_text(value: Any) -> str:
    """A DICOM value as ``metadata`` holds it: '' when absent, multi-values joined by '\\'."""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


class InstanceRef(BaseModel):
    """One archived DICOM instance (a Part 10 file on the hub's disk)."""

    model_config = ConfigDict(extra="forbid")

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: str = Field(description="absolute path of the Part 10 file")


class StudyBatch(BaseModel):
    """A study (or a follow-up of late instances) ready for the channel."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str
    batch: int = Field(ge=1)
    calling_aet: str
    called_aet: str
    instances: list[InstanceRef] = Field(min_length=1)
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="study-level DICOM attributes by keyword (Modality, BodyPartExamined, ...)",
    )
