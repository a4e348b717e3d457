"""The contract between an order transform and the worklist: one Modality Worklist action."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["WorklistAction", "WorklistItem"]

WorklistAction = Literal["create", "update", "cancel", "discontinue", "status"]


class WorklistItem(BaseModel):
    """What a transform emits for one ORC/OBR group of an order message.

    ``key`` identifies the order across messages (NW then XO/CA/DC/SC); the
    template decides it (placer order number, namespaced by sender, by default).
    ``attributes`` holds DICOM keywords to values, as in pydicom's keyword access;
    ``ScheduledProcedureStepSequence`` is a list of such mappings. PN values are
    DICOM PN strings (``FAMILY^GIVEN^MIDDLE``), DA ``YYYYMMDD``, TM ``HHMMSS``.
    """

    model_config = ConfigDict(extra="forbid")

    action: WorklistAction
    key: str = Field(min_length=1, max_length=200)
    status: str | None = Field(
        default=None,
        description="Scheduled Procedure Step Status (SCHEDULED, ARRIVED, READY, STARTED, ...)",
    )
    attributes: dict[str, Any] = Field(default_factory=dict)
