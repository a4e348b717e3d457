"""The ``normalize:`` section of a channel file: how incoming images are corrected.

Tag morphing, as an analyst declares it per channel::

    normalize:
      institution_name: "St. Example Hospital"   # filled when missing
      issuer_of_patient_id: "HOSP"               # filled when missing
      link_worklist: true                         # find the order: AccessionNumber, else study UID
      copy_from_order: [PatientName, PatientID, AccessionNumber]   # filled when missing
      rules:
        - name: body part from the protocol
          when: 'ds.Modality == "CT"'             # optional; ds = the image's attributes
          map: {BodyPartExamined: body_part}      # keyword -> mapping table (by current value)
        - name: study description
          set: {StudyDescription: '{{ lookup("study_description", ds.StudyDescription,
                                             default=ds.StudyDescription) }}'}

Keywords are checked here (a misspelt keyword is a configuration error, not a
silently ignored rule); expressions and templates are compiled by
:class:`engine.normalize.Normalizer`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom import DataElement, Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword

from engine.dicom_checks import check_element
from engine.errors import ConfigError, TransformError
from engine.study_batch import METADATA_KEYWORDS

__all__ = [
    "DEFAULT_COPY_FROM_ORDER",
    "DatasetView",
    "NormalizeConfig",
    "NormalizeRule",
    "Reason",
    "element_of",
    "is_empty",
    "keyword_tag",
    "study_metadata",
    "text_of",
]

#: The demographics and order attributes a modality most often leaves empty or mistypes.
DEFAULT_COPY_FROM_ORDER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "RequestedProcedureDescription",
    "ReferringPhysicianName",
)

#: Reason for the Attribute Modification (0400,0565): the two defined terms.
Reason = Literal["COERCE", "CORRECT"]

# Rules write text: string VRs only (numbers, binary data and sequences have no
# sensible one-line template form, and writing them is not what tag morphing is for).
_WRITABLE_VRS = frozenset(
    {
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    }
)
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Attributes the normalizer itself maintains: a rule writing them would corrupt the audit trail.
_RESERVED = frozenset({"OriginalAttributesSequence", "SpecificCharacterSet"})


def _writable_keyword(keyword: str) -> str:
    """``keyword`` if a rule may write it, else ``ValueError`` (pydantic reports it)."""
    if tag_for_keyword(keyword) is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    if keyword in _RESERVED:
        raise ValueError(f"{keyword} is maintained by the normalizer and cannot be set")
    vr = dictionary_VR(keyword)
    if vr not in _WRITABLE_VRS:
        raise ValueError(f"{keyword} has VR {vr}: only text attributes can be set by a rule")
    return keyword


def _known_keyword(keyword: str) -> str:
    if tag_for_keyword(keyword) is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    if keyword in _RESERVED:
        raise ValueError(f"{keyword} is maintained by the normalizer and cannot be copied")
    return keyword


class NormalizeRule(BaseModel):
    """One named correction, applied when ``when`` holds (always, without ``when``).

    ``map`` replaces a keyword's value by the mapping table's value for the current
    value (a value missing from the table is left as is, or fails with ``strict``);
    ``set`` renders a Jinja template as the new value; ``remove`` deletes attributes.
    Within a rule, ``map`` runs before ``set`` before ``remove``; rules run in order.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=120)
    when: str | None = Field(default=None, min_length=1)
    map: dict[str, str] = Field(default_factory=dict, description="keyword -> mapping table")
    set: dict[str, str] = Field(default_factory=dict, description="keyword -> Jinja template")
    remove: list[str] = Field(default_factory=list, description="keywords to delete")
    strict: bool = Field(
        default=False, description="a value missing from a `map` table fails the instance"
    )
    reason: Reason = Field(
        default="COERCE",
        description="recorded in OriginalAttributesSequence: COERCE (made to fit local "
        "conventions) or CORRECT (the modality's value was wrong)",
    )

    @field_validator("map", "set")
    @classmethod
    def _check_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for keyword in value:
            _writable_keyword(keyword)
        return value

    @field_validator("remove")
    @classmethod
    def _check_removed(cls, value: list[str]) -> list[str]:
        for keyword in value:
            _known_keyword(keyword)
        return value

    @model_validator(mode="after")
    def _does_something(self) -> NormalizeRule:
        if not (self.map or self.set or self.remove):
            raise ValueError(f"rule {self.name!r} has no map, set or remove")
        return self


class NormalizeConfig(BaseModel):
    """Tag morphing of a channel's incoming images; every part is optional."""

    model_config = ConfigDict(extra="forbid")

    institution_name: str | None = Field(default=None, description="filled when missing")
    issuer_of_patient_id: str | None = Field(default=None, description="filled when missing")
    link_worklist: bool = Field(
        default=False,
        description="look up the order in the Modality Worklist by AccessionNumber, "
        "else by StudyInstanceUID",
    )
    copy_from_order: list[str] = Field(
        default_factory=lambda: list(DEFAULT_COPY_FROM_ORDER),
        description="attributes copied from the order when missing or empty in the image",
    )
    fill_request_attributes: bool = Field(
        default=True,
        description="build RequestAttributesSequence from the order when the image has none",
    )
    source_of_previous_values: str = Field(
        default="",
        max_length=64,
        description="SourceOfPreviousValues written with the original values, e.g. the site",
    )
    rules: list[NormalizeRule] = Field(default_factory=list)

    @field_validator("institution_name", "issuer_of_patient_id")
    @classmethod
    def _check_lo(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_element("InstitutionName", value, "value")  # both are LO
            except TransformError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("copy_from_order")
    @classmethod
    def _check_copied(cls, value: list[str]) -> list[str]:
        for keyword in value:
            _known_keyword(keyword)
        return value

    @model_validator(mode="after")
    def _unique_rule_names(self) -> NormalizeConfig:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self


# -- what rules read: the image as text ------------------------------------------


class DatasetView:
    """Read-only attribute access for templates: ``ds.Keyword`` is text, ``''`` when absent.

    Unknown keywords are undefined (a template error, so a misspelling is caught by
    :meth:`Normalizer.check`); binary values (pixel data...) read as ``''``.
    """

    __slots__ = ("_ds",)

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds

    def __getattr__(self, name: str) -> Any:
        tag = None if name.startswith("_") else tag_for_keyword(name)
        if tag is None:
            raise AttributeError(name)
        return _view_value(self._ds.get(tag))

    def __getitem__(self, keyword: str) -> Any:
        try:
            return self.__getattr__(keyword)
        except AttributeError:
            raise KeyError(keyword) from None

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and bool(self.get(keyword))

    def get(self, keyword: str, default: str = "") -> Any:
        """The value of ``keyword`` (``default`` when absent, empty or not a keyword)."""
        try:
            value = self.__getattr__(keyword)
        except AttributeError:
            return default
        return value if value else default


def _view_value(elem: DataElement | None) -> Any:
    if elem is None or elem.VR in _BINARY_VRS:
        return ""
    if elem.VR == "SQ":
        return tuple(DatasetView(item) for item in elem.value)
    return text_of(elem)


def keyword_tag(keyword: str) -> int:
    """The tag of a keyword the configuration has already validated (else ConfigError)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ConfigError(f"{keyword!r} is not a DICOM keyword")
    return tag


def element_of(ds: Dataset, keyword: str) -> DataElement | None:
    """The element of ``keyword`` (``Dataset.get`` with a keyword returns the bare value)."""
    elem: DataElement | None = ds.get(keyword_tag(keyword))
    return elem


def text_of(elem: DataElement | None) -> str:
    """An element's value as DICOM text (multiple values joined by ``\\``)."""
    if elem is None or elem.value is None or elem.VR == "SQ":
        return ""
    if elem.VM > 1:
        return "\\".join(str(v) for v in elem.value)
    return str(elem.value)


def is_empty(elem: DataElement | None) -> bool:
    if elem is None or elem.value is None:
        return True
    if elem.VR == "SQ":
        return len(elem.value) == 0
    return elem.VM == 0 or text_of(elem) == ""


def study_metadata(ds: Dataset) -> dict[str, str]:
    """The study-level attributes routing rules look at, as text (``''`` when absent).

    ``ProcedureCode`` is ProcedureCodeSequence[0].CodeValue.
    """
    metadata = {keyword: text_of(element_of(ds, keyword)) for keyword in METADATA_KEYWORDS}
    codes = ds.get("ProcedureCodeSequence")
    metadata["ProcedureCode"] = text_of(element_of(codes[0], "CodeValue")) if codes else ""
    return metadata
