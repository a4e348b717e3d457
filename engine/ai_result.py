"""The contract for AI results inside the hub, whatever protocol brought them.

A DICOM SR/GSPS/SEG from an AI node, a JSON finding posted back, or the
outputs of a KServe v2 inference all become one :class:`AIResult`: what model
(name and version) said what about which study. The reading worklist, the
audit trail and the reports are built from these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AIFinding", "AIMode", "AIResult"]

AIMode = Literal["shadow", "triage", "assistant"]


class AIFinding(BaseModel):
    """One finding: what, how sure, whether it is critical, and where."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, description="machine name, e.g. 'hyperdense-region'")
    label: str = Field(min_length=1, description="what a radiologist reads")
    score: float = Field(ge=0, le=1)
    critical: bool = False
    referenced_sop_instance_uid: str | None = None
    bounding_box: list[float] | None = Field(
        default=None, min_length=4, max_length=4, description="x0, y0, x1, y1 in pixels"
    )
    measurements: dict[str, float] = Field(default_factory=dict)


class AIResult(BaseModel):
    """A model's answer about one study."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str
    accession_number: str | None = None
    model: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    status: Literal["completed", "failed"] = "completed"
    findings: list[AIFinding] = Field(default_factory=list)
    produced_at: datetime
    source: Literal["dicom", "json", "kserve"]
    result_sop_instance_uids: list[str] = Field(
        default_factory=list, description="the SR/GSPS/SEG/SC instances that carried it"
    )

    @property
    def critical(self) -> bool:
        """True when any finding is critical."""
        return any(finding.critical for finding in self.findings)
