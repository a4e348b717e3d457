"""Settings of the reading worklist: SLAs, subspecialty routing, the radiologists.

One :class:`ReadingWorklistConfig` per hub: every channel that feeds the
reading worklist (completed studies, AI results) writes the same table, so
SLAs and subspecialties must not differ between them.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.priority import DEFAULT_SLA_MINUTES, ORDER_PRIORITIES, normalize_order_priority

__all__ = ["Radiologist", "ReadingWorklistConfig"]

_KEY = re.compile(r"^[A-Z0-9]{1,16}(:[A-Z0-9_ ]{1,64})?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Radiologist(_Strict):
    """A reader and the subspecialties they read."""

    name: str = Field(min_length=1, max_length=64)
    subspecialties: list[str] = Field(default_factory=list)


class ReadingWorklistConfig(_Strict):
    """How the reading worklist prioritizes and who it suggests."""

    sla_minutes: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SLA_MINUTES),
        description="minutes to read a study, by order priority (STAT, HIGH, MEDIUM, ROUTINE, "
        "LOW; aliases such as ASAP accepted); priorities left out keep their defaults "
        f"{DEFAULT_SLA_MINUTES}",
    )
    subspecialties: dict[str, str] = Field(
        default_factory=dict,
        description="'MODALITY:BODYPART' (e.g. 'CT:HEAD') or 'MODALITY' → subspecialty; "
        "the exact pair wins over the modality alone; no match: no subspecialty",
    )
    radiologists: list[Radiologist] = Field(default_factory=list)

    @field_validator("sla_minutes")
    @classmethod
    def _complete_slas(cls, value: dict[str, float]) -> dict[str, float]:
        slas = dict(DEFAULT_SLA_MINUTES)
        for key, minutes in value.items():
            term = normalize_order_priority(key)
            if key.strip().upper() not in (*ORDER_PRIORITIES, "ASAP", "URGENT") or minutes <= 0:
                raise ValueError(
                    f"sla_minutes: '{key}: {minutes}' must be a positive number of minutes "
                    f"for one of {', '.join(ORDER_PRIORITIES)}"
                )
            slas[term] = float(minutes)
        return slas

    @field_validator("subspecialties")
    @classmethod
    def _upper_keys(cls, value: dict[str, str]) -> dict[str, str]:
        mapping: dict[str, str] = {}
        for key, subspecialty in value.items():
            normalized = key.strip().upper()
            if not _KEY.match(normalized) or not subspecialty.strip():
                raise ValueError(
                    f"subspecialties: '{key}' must be 'MODALITY' or 'MODALITY:BODYPART' "
                    "mapped to a subspecialty name"
                )
            mapping[normalized] = subspecialty.strip()
        return mapping

    @model_validator(mode="after")
    def _unique_radiologists(self) -> ReadingWorklistConfig:
        names = [r.name for r in self.radiologists]
        if len(names) != len(set(names)):
            raise ValueError("radiologists: each name must appear once")
        return self

    def sla_for(self, order_priority: str) -> float:
        """The SLA in minutes of an order priority (any spelling normalize accepts)."""
        return self.sla_minutes[normalize_order_priority(order_priority)]

    def subspecialty_for(self, modality: str, body_part: str) -> str | None:
        """The subspecialty reading a modality/body part, or None when unmapped."""
        modality = modality.strip().upper()
        pair = f"{modality}:{body_part.strip().upper()}"
        return self.subspecialties.get(pair) or self.subspecialties.get(modality)
