"""How urgently a study should be read: one pure function, :func:`priority_score`.

Higher scores are read first. The score is built from *bands* so that no
amount of waiting or AI suspicion ever lets a study cross into a band above
its own, except by the two rules a reading room expects:

==========================  ===================================================
band                        score
==========================  ===================================================
critical AI finding         ``1_000_000 + waited_minutes``
order priority *p*          ``1000 * rank(p) + breach + urgency + ai_nudge``
==========================  ===================================================

with ``rank``: STAT 4, HIGH 3, MEDIUM 2, ROUTINE 1, LOW 0, and inside an
order-priority band (all terms bounded, so the band's total stays below 1000):

* ``urgency = 400 * min(waited / sla, 1)`` while within the SLA: the share of
  the SLA already used, so waiting raises a study among its peers;
* ``breach = 500`` once ``waited > sla``, plus the same ``400 * min((waited -
  sla) / sla, 1)`` for how far past: a study past its SLA rises above every
  study of the same order priority still within it (but not above a higher
  order priority: a routine study never outranks a STAT);
* ``ai_nudge = 90 * ai_score`` for a non-critical AI suspicion (0 without AI):
  it orders studies of equal wait, it never overrides the SLA.

A critical AI finding puts the study above every non-critical one whatever
its order priority; critical studies are then ordered by wait (the one
waiting longest first). The worklist never waits for AI: a study without a
result simply has ``ai_critical=False, ai_score=None``.
"""

from __future__ import annotations

__all__ = [
    "CRITICAL_BASE",
    "DEFAULT_SLA_MINUTES",
    "ORDER_PRIORITIES",
    "normalize_order_priority",
    "priority_score",
]

#: DICOM Requested Procedure Priority (0040,1003) defined terms, most urgent first.
ORDER_PRIORITIES = ("STAT", "HIGH", "MEDIUM", "ROUTINE", "LOW")

#: Minutes from a study's completion to when it should have been read.
DEFAULT_SLA_MINUTES: dict[str, float] = {
    "STAT": 60,
    "HIGH": 240,
    "MEDIUM": 720,
    "ROUTINE": 1440,
    "LOW": 2880,
}

#: Score of a critical study that has just arrived (every critical one is above this).
CRITICAL_BASE = 1_000_000.0

_RANK = {"STAT": 4, "HIGH": 3, "MEDIUM": 2, "ROUTINE": 1, "LOW": 0}
_BAND = 1000.0
_URGENCY = 400.0
_BREACH = 500.0
_AI_NUDGE = 90.0

# Words sites send for the same priorities (HL7 codes, ASAP...) → DICOM terms.
_ALIASES = {
    "S": "STAT",
    "A": "HIGH",
    "ASAP": "HIGH",
    "URGENT": "HIGH",
    "T": "HIGH",
    "R": "ROUTINE",
    "": "ROUTINE",
}


def normalize_order_priority(value: object) -> str:
    """An order's priority as a DICOM term: STAT, HIGH, MEDIUM, ROUTINE or LOW.

    Accepts the DICOM terms in any case and the usual aliases (HL7 S/A/R,
    ASAP, URGENT). No priority at all is ROUTINE (HL7's default too); an
    unknown word is MEDIUM, as :func:`engine.template_helpers.priority_from_hl7`
    maps unknown HL7 codes, so it is neither dropped to the bottom nor promoted.
    """
    text = "" if value is None else str(value).strip().upper()
    if text in _RANK:
        return text
    return _ALIASES.get(text, "MEDIUM")


def priority_score(
    order_priority: str,
    ai_critical: bool,
    ai_score: float | None,
    waited_minutes: float,
    sla_minutes: float,
) -> float:
    """The reading priority of a study (higher = read first); see the module docstring.

    ``order_priority`` is normalized with :func:`normalize_order_priority`;
    ``waited_minutes`` is the time since the study was completed (negative
    counts as 0); ``sla_minutes`` is the SLA of its order priority and must
    be positive; ``ai_score`` is the highest finding score in [0, 1] (None:
    no AI result).
    """
    if sla_minutes <= 0:
        raise ValueError("sla_minutes must be positive")
    waited = max(waited_minutes, 0.0)
    if ai_critical:
        return CRITICAL_BASE + waited
    band = _BAND * _RANK[normalize_order_priority(order_priority)]
    nudge = _AI_NUDGE * min(max(ai_score or 0.0, 0.0), 1.0)
    if waited <= sla_minutes:
        return band + _URGENCY * (waited / sla_minutes) + nudge
    past = min((waited - sla_minutes) / sla_minutes, 1.0)
    return band + _BREACH + _URGENCY * past + nudge
