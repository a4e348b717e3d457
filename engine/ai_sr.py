"""Findings of a TID 1500 Measurement Report (SR), for :mod:`engine.ai_findings`.

Each Measurement Group (125007, DCM) about a finding becomes one
:class:`~engine.ai_result.AIFinding`. A group with no finding type, no region or image and
no NUM (a study-level assessment, as the reference AI node writes) is no finding: its
evaluations count as report-level ones (below).

* code/label: the value of its Finding (121071, DCM) item (code: its meaning as a machine
  name, ``Hyperdense region`` → ``hyperdense-region``, the JSON side's convention),
  else its Tracking Identifier;
* score: the first NUM whose concept meaning says "probability" or "score" (% divided by
  100, then kept within 0..1); a group without one scores 1.0: the AI asserts it;
* critical: a qualitative evaluation whose concept meaning is "Critical" or "Critical
  <something>" (any scheme: "Critical finding") valued yes/true. Without one, a report-level
  evaluation (outside the groups, or in an assessment group) applies; without that either,
  a *given* score ≥ :data:`CRITICAL_SCORE` is critical (an unscored finding is not: that
  would make every bare assertion critical). A report-level "critical: yes" with no
  finding group becomes a finding of its own, so the flag is never lost;
* bounding box and referenced image: its SCOORD (min/max of the points; a circle's
  extent), else the image of an IMAGE item of the group;
* measurements: the other NUMs, keyed by derivation, concept meaning and unit ("Volume"
  in mm3 → ``volume_mm3``; "Attenuation Coefficient", derivation "Mean", in HU →
  ``mean_hu``: HU already says attenuation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from engine.ai_result import AIFinding

__all__ = ["CRITICAL_SCORE", "bounding_box", "machine_name", "sr_algorithm", "sr_findings"]

#: A finding with a score at least this high is critical unless the AI said otherwise.
CRITICAL_SCORE = 0.8

_DCM = "DCM"
_ALGORITHM_NAME = ("111001", _DCM)
_ALGORITHM_VERSION = ("111003", _DCM)
_MEASUREMENT_GROUP = ("125007", _DCM)
_FINDING = ("121071", _DCM)
_TRACKING_IDENTIFIER = ("112039", _DCM)
_DERIVATION = ("121401", _DCM)
_ATTENUATION = ("112031", _DCM)
_LOCATING = frozenset({"SCOORD", "SCOORD3D", "IMAGE", "NUM"})
_YES = frozenset({"yes", "true", "y", "373066001"})  # 373066001: SCT "Yes"
_NO = frozenset({"no", "false", "n", "373067005"})  # 373067005: SCT "No"
_UNIT_SUFFIXES = {"1": "", "{ratio}": "", "%": "percent", "[hnsf'u]": "hu"}


@dataclass(frozen=True)
class _Concept:
    value: str
    scheme: str
    meaning: str

    @property
    def key(self) -> tuple[str, str]:
        return self.value, self.scheme


def sr_algorithm(ds: Dataset) -> tuple[str | None, str | None]:
    """(name, version) of the first TID 4019 Algorithm Identification in the report."""
    name = version = None
    for item in _walk(ds):
        concept = _name(item)
        if concept is None or str(item.get("ValueType") or "") != "TEXT":
            continue
        text = str(item.get("TextValue") or "").strip() or None
        if concept.key == _ALGORITHM_NAME and name is None:
            name = text
        elif concept.key == _ALGORITHM_VERSION and version is None:
            version = text
        if name and version:
            break
    return name, version


def sr_findings(ds: Dataset) -> list[AIFinding]:
    """One finding per measurement group about a finding (see the module doc)."""
    groups = [item for item in _walk(ds) if _is_group(item)]
    assessments = [group for group in groups if _is_assessment(group)]
    report_critical = _report_critical(ds, assessments)
    findings = [_finding(g, report_critical) for g in groups if not _is_assessment(g)]
    if not findings and report_critical:
        findings.append(AIFinding(code="critical", label="Critical finding", score=1.0,
                                  critical=True))  # fmt: skip
    return findings


def bounding_box(graphic_type: Any, data: Any) -> list[float] | None:
    """x0, y0, x1, y1 of SCOORD/GSPS graphic data (column, row pairs); None for a point."""
    kind = str(graphic_type or "").upper()
    try:
        values = [float(v) for v in (data or [])]
    except (TypeError, ValueError):
        return None
    xs, ys = values[0::2], values[1::2]
    if kind == "POINT" or len(xs) < 2 or len(xs) != len(ys):
        return None
    if kind == "CIRCLE":  # centre, then a point of the circumference
        radius = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
        return [xs[0] - radius, ys[0] - radius, xs[0] + radius, ys[0] + radius]
    # POLYLINE, MULTIPOINT, ELLIPSE (its axes' end points), RECTANGLE (two corners)...
    return [min(xs), min(ys), max(xs), max(ys)]


# -- one measurement group ----------------------------------------------------------------


def _finding(group: Dataset, report_critical: bool | None) -> AIFinding:
    children = list(group.get("ContentSequence") or [])
    code, label = _what(children)
    score, measurements = _numbers(children)
    critical = _critical(children)
    if critical is None:
        critical = report_critical
    if critical is None:
        critical = score is not None and score >= CRITICAL_SCORE
    box, image = _region(children)
    return AIFinding(
        code=code,
        label=label,
        score=1.0 if score is None else score,
        critical=critical,
        referenced_sop_instance_uid=image,
        bounding_box=box,
        measurements=measurements,
    )


def _what(children: list[Dataset]) -> tuple[str, str]:
    """(code, label) from the Finding item, else the tracking identifier."""
    for item in children:
        concept = _name(item)
        value = _coded_value(item)
        if concept is not None and concept.key == _FINDING and value is not None:
            code = _slug(value.meaning) or value.value
            if code:
                return code, value.meaning or value.value
    for item in children:
        concept = _name(item)
        text = str(item.get("TextValue") or "").strip()
        if concept is not None and concept.key == _TRACKING_IDENTIFIER and text:
            return _slug(text) or "finding", text
    return "finding", "Finding"


def _numbers(children: list[Dataset]) -> tuple[float | None, dict[str, float]]:
    """The score (the first probability/score NUM) and the other NUMs as measurements."""
    score: float | None = None
    measurements: dict[str, float] = {}
    for item in children:
        concept = _name(item)
        number = _numeric(item)
        if concept is None or number is None:
            continue
        value, unit = number
        meaning = concept.meaning.lower()
        if score is None and ("probability" in meaning or "score" in meaning):
            score = min(max(value / 100 if unit == "%" else value, 0.0), 1.0)
            continue
        measurements[_measurement_key(item, concept, unit)] = value
    return score, measurements


def _measurement_key(item: Dataset, concept: _Concept, unit: str) -> str:
    """``volume_mm3``, ``mean_hu``...: derivation, concept meaning, unit."""
    suffix = _UNIT_SUFFIXES.get(unit.lower(), _slug(unit, "_"))
    derivation = ""
    for child in item.get("ContentSequence") or []:
        modifier, coded = _name(child), _coded_value(child)
        if modifier is not None and modifier.key == _DERIVATION and coded is not None:
            derivation = _slug(coded.meaning, "_")
    name = _slug(concept.meaning or concept.value, "_")
    if concept.key == _ATTENUATION and suffix == "hu":
        name = "" if derivation else "attenuation"  # HU already says attenuation
    return "_".join(part for part in (derivation, name, suffix) if part) or "value"


def _numeric(item: Dataset) -> tuple[float, str] | None:
    """(value, unit code) of a NUM item; None for anything else or no finite value."""
    if str(item.get("ValueType") or "") != "NUM":
        return None
    measured = item.get("MeasuredValueSequence") or []
    if not measured:
        return None
    raw = measured[0].get("FloatingPointValue")
    if raw is None:
        raw = measured[0].get("NumericValue")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    units = measured[0].get("MeasurementUnitsCodeSequence") or []
    unit = str(units[0].get("CodeValue") or "").strip() if units else ""
    return value, unit


def _critical(children: list[Dataset]) -> bool | None:
    """The value of a "critical" evaluation among ``children``; None when there is none."""
    for item in children:
        concept = _name(item)
        meaning = concept.meaning.lower() if concept is not None else ""
        if meaning != "critical" and not meaning.startswith("critical "):
            continue
        coded = _coded_value(item)
        answer = (
            {coded.value.lower(), coded.meaning.lower()}
            if coded is not None
            else {str(item.get("TextValue") or "").strip().lower()}
        )
        if answer & _YES:
            return True
        if answer & _NO:
            return False
    return None


def _report_critical(ds: Dataset, assessments: list[Dataset]) -> bool | None:
    """A "critical" evaluation of the report: outside the groups, or in an assessment group."""
    items = list(_walk(ds, skip=_is_group))
    for group in assessments:
        items.extend(group.get("ContentSequence") or [])
    return _critical(items)


def _is_assessment(group: Dataset) -> bool:
    """A group that judges the study as a whole: no finding type, place or number."""
    for item in group.get("ContentSequence") or []:
        concept = _name(item)
        if str(item.get("ValueType") or "") in _LOCATING:
            return False
        if concept is not None and concept.key == _FINDING:
            return False
    return True


def _region(children: list[Dataset]) -> tuple[list[float] | None, str | None]:
    """The SCOORD's box and image; else the group's source image without a box."""
    image = None
    for item in children:
        kind = str(item.get("ValueType") or "")
        if kind == "SCOORD":
            box = bounding_box(item.get("GraphicType"), item.get("GraphicData"))
            return box, _referenced_image(item.get("ContentSequence") or [])
        if kind == "IMAGE" and image is None:
            image = _referenced_image([item])
    return None, image


def _referenced_image(items: list[Dataset]) -> str | None:
    for item in items:
        sops = item.get("ReferencedSOPSequence") or []
        if str(item.get("ValueType") or "") == "IMAGE" and sops:
            return str(sops[0].get("ReferencedSOPInstanceUID") or "") or None
    return None


# -- content tree helpers --------------------------------------------------------------------


def _walk(ds: Dataset, skip: Callable[[Dataset], bool] | None = None) -> Iterator[Dataset]:
    """Every content item below ``ds``, depth first (not below items ``skip`` is true of)."""
    for item in ds.get("ContentSequence") or []:
        if skip is not None and skip(item):
            continue
        yield item
        yield from _walk(item, skip)


def _is_group(item: Dataset) -> bool:
    concept = _name(item)
    return str(item.get("ValueType") or "") == "CONTAINER" and (
        concept is not None and concept.key == _MEASUREMENT_GROUP
    )


def _name(item: Dataset) -> _Concept | None:
    return _code(item.get("ConceptNameCodeSequence"))


def _coded_value(item: Dataset) -> _Concept | None:
    return _code(item.get("ConceptCodeSequence"))


def _code(sequence: Any) -> _Concept | None:
    if not sequence:
        return None
    code = sequence[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    return _Concept(
        str(value or "").strip(),
        str(code.get("CodingSchemeDesignator") or "").strip(),
        str(code.get("CodeMeaning") or "").strip(),
    )


def machine_name(text: str) -> str:
    """A finding code from a code meaning: ``Hyperdense region`` → ``hyperdense-region``."""
    return _slug(text)


def _slug(text: str, separator: str = "-") -> str:
    """``Hyperdense region`` → ``hyperdense-region`` (machine names)."""
    return re.sub(r"[^a-z0-9]+", separator, text.lower()).strip(separator)
