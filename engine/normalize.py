"""Tag morphing: correct an image's attributes before it is archived and routed.

A :class:`Normalizer` applies a channel's :class:`~engine.normalize_config.NormalizeConfig`
to each instance of a completed study, in place, in this order:

1. fill-if-empty site constants (InstitutionName, IssuerOfPatientID);
2. link to the order in the Modality Worklist (AccessionNumber, else StudyInstanceUID)
   and copy the configured attributes the image lacks, plus RequestAttributesSequence;
3. the channel's rules (``map`` through a mapping table, ``set`` from a template,
   ``remove``), in order.

Every value replaced, inserted or removed is kept: the previous values go into
OriginalAttributesSequence (PS3.3 C.12.1.1.9), one item per reason, appended to any
items the instance already had. An inserted attribute is recorded with an empty value,
so the sequence also tells which attributes did not exist before.

Templates and expressions see ``ds`` (the image) and ``order`` (the linked worklist item,
empty when none), read-only: ``ds.StudyDescription`` is the value as text, ``''`` when
absent; a sequence is a list of such views (``ds.ProcedureCodeSequence[0].CodeValue``).
Error messages name the rule and the keyword, never a value (values are PHI).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from jinja2 import Template, UndefinedError
from jinja2.exceptions import SecurityError
from pydicom import DataElement, Dataset, Sequence
from pydicom.charset import convert_encodings
from pydicom.config import RAISE
from pydicom.datadict import dictionary_VR

from engine.dicom_checks import check_element
from engine.errors import ConfigError, TransformError
from engine.normalize_config import (
    DatasetView,
    NormalizeConfig,
    NormalizeRule,
    Reason,
    element_of,
    is_empty,
    keyword_tag,
    study_metadata,
    text_of,
)
from engine.templating import TemplateEnvironment
from engine.worklist import WorklistStore

__all__ = ["MODIFYING_SYSTEM", "Change", "DatasetView", "Normalizer", "study_metadata"]

#: Modifying System (0400,0563) written in OriginalAttributesSequence items.
MODIFYING_SYSTEM = "MERIDIAN"

_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
_ORIGINAL_ATTRIBUTES = "OriginalAttributesSequence"
_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_SPS = "ScheduledProcedureStepSequence"
# Request Attributes Macro (PS3.3 Table 10-9): taken from the order or its procedure step.
_REQUEST_FROM_ORDER = (
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
)
_REQUEST_FROM_STEP = (
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
)


@dataclass(frozen=True)
class Change:
    """One attribute changed by :meth:`Normalizer.normalize`.

    ``old`` is ``None`` when the attribute was absent, ``new`` is ``None`` when it was
    removed. The elements carry values (PHI): they are left out of ``repr`` so a change
    can be logged safely.
    """

    keyword: str
    source: str  # "site", "worklist", "rule:<name>" or "charset"
    reason: Reason
    old: DataElement | None = field(repr=False)
    new: DataElement | None = field(repr=False)


@dataclass(frozen=True)
class _CompiledRule:
    rule: NormalizeRule
    when: Callable[..., Any] | None
    templates: dict[str, Template]


class _OrderCache:
    """A small LRU of worklist look-ups: the 400 instances of a study make one query."""

    def __init__(self, size: int = 64, ttl_seconds: float = 60.0) -> None:
        self._size = size
        self._ttl = ttl_seconds
        self._entries: OrderedDict[tuple[str, str], tuple[float, Dataset | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[bool, Dataset | None]:
        with self._lock:
            entry = self._entries.get(key)
            # Expire so an order that arrives, or changes, after its images is seen later.
            if entry is None or time.monotonic() - entry[0] > self._ttl:
                return False, None
            self._entries.move_to_end(key)
            return True, entry[1]

    def put(self, key: tuple[str, str], item: Dataset | None) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), item)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class Normalizer:
    """Applies one channel's tag morphing; compile once, call :meth:`normalize` per instance.

    ``worklist`` is needed when the config links to the worklist. Raises
    :class:`ConfigError` naming the rule when an expression or template does not compile.
    Thread-safe: the per-instance state lives in :meth:`normalize`'s locals.
    """

    def __init__(
        self,
        config: NormalizeConfig,
        templates: TemplateEnvironment,
        worklist: WorklistStore | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    ) -> None:
        if config.link_worklist and worklist is None:
            raise ConfigError("normalize: link_worklist needs the worklist store")
        self.config = config
        self._templates = templates
        self._worklist = worklist
        self._clock = clock
        self._orders = _OrderCache()
        self._rules = [self._compile(rule) for rule in config.rules]

    # -- configuration --------------------------------------------------------

    def _compile(self, rule: NormalizeRule) -> _CompiledRule:
        try:
            when = self._templates.compile_expression(rule.when) if rule.when else None
        except ConfigError as exc:
            raise ConfigError(f"normalize rule {rule.name!r}: when: {exc}") from exc
        # The same sandboxed "text" environment the transforms use (no second environment).
        compiled: dict[str, Template] = {}
        for keyword, source in rule.set.items():
            try:
                compiled[keyword] = self._templates.compile_template(source)
            except ConfigError as exc:
                raise ConfigError(f"normalize rule {rule.name!r}: set {keyword}: {exc}") from exc
        return _CompiledRule(rule, when, compiled)

    def check(self) -> None:
        """Load every mapping table the rules use and dry-run their expressions and templates.

        The dry run uses an empty image, so misspelt keywords, unknown helpers and
        missing tables inside templates are found; a data-dependent failure (a lookup
        without default of an empty key) is not a configuration error and is ignored.
        Raises :class:`ConfigError` naming the rule.
        """
        empty = DatasetView(Dataset())
        for compiled in self._rules:
            name = compiled.rule.name
            for keyword, table in compiled.rule.map.items():
                try:
                    self._templates.tables.table(table)
                except ConfigError as exc:
                    raise ConfigError(f"normalize rule {name!r}: map {keyword}: {exc}") from exc
            steps: list[tuple[str, Callable[..., Any]]] = []
            if compiled.when is not None:
                steps.append(("when", compiled.when))
            steps.extend((f"set {k}", t.render) for k, t in compiled.templates.items())
            for label, step in steps:
                try:
                    step(ds=empty, order=empty)
                except (ConfigError, UndefinedError, SecurityError) as exc:
                    raise ConfigError(f"normalize rule {name!r}: {label}: {exc}") from exc
                except Exception:  # data-dependent (say, a lookup of an empty key): not config
                    continue

    # -- normalization --------------------------------------------------------

    @staticmethod
    def study_metadata(ds: Dataset) -> dict[str, str]:
        """The routing attributes of a normalized instance (see :func:`study_metadata`)."""
        return study_metadata(ds)

    def normalize(self, ds: Dataset) -> list[Change]:
        """Apply the configuration to ``ds`` in place; the changes made, in order.

        Raises :class:`TransformError` (naming the rule and keyword, never the value)
        when a rule fails or produces a value invalid for the attribute's VR.
        """
        changes: list[Change] = []
        self._fill_site(ds, changes)
        order = self._order_for(ds) if self.config.link_worklist else None
        if order is not None:
            self._copy_from_order(ds, order, changes)
        order_view = DatasetView(order if order is not None else Dataset())
        for compiled in self._rules:
            self._apply_rule(compiled, ds, order_view, changes)
        if changes:
            self._fit_charset(ds, changes)
            self._record(ds, changes)
        return changes

    def _fill_site(self, ds: Dataset, changes: list[Change]) -> None:
        fills = (
            ("InstitutionName", self.config.institution_name),
            ("IssuerOfPatientID", self.config.issuer_of_patient_id),
        )
        for keyword, value in fills:
            if value is not None and is_empty(element_of(ds, keyword)):
                where = f"normalize: {keyword}"
                _write(
                    ds, keyword, value, where=where, source="site", reason="COERCE", changes=changes
                )

    def _order_for(self, ds: Dataset) -> Dataset | None:
        if self._worklist is None:
            return None
        accession = text_of(element_of(ds, "AccessionNumber"))
        study_uid = text_of(element_of(ds, "StudyInstanceUID"))
        key = (accession, study_uid)
        known, item = self._orders.get(key)
        if known:
            return item
        item = self._worklist.find_item(accession_number=accession) if accession else None
        if item is None and study_uid:
            item = self._worklist.find_item(study_instance_uid=study_uid)
        self._orders.put(key, item)
        return item

    def _copy_from_order(self, ds: Dataset, order: Dataset, changes: list[Change]) -> None:
        steps = order.get(_SPS)
        step = steps[0] if steps else Dataset()
        for keyword in self.config.copy_from_order:
            source = element_of(order, keyword) or element_of(step, keyword)
            if source is not None and not is_empty(source) and is_empty(element_of(ds, keyword)):
                _put(ds, _copied(source), "worklist", "COERCE", changes)
        request_attributes = element_of(ds, "RequestAttributesSequence")
        if self.config.fill_request_attributes and is_empty(request_attributes):
            request = Dataset()
            for keywords, origin in ((_REQUEST_FROM_ORDER, order), (_REQUEST_FROM_STEP, step)):
                for keyword in keywords:
                    found = element_of(origin, keyword)
                    if found is not None and not is_empty(found):
                        request.add(_copied(found))
            if len(request):
                elem = DataElement(
                    keyword_tag("RequestAttributesSequence"), "SQ", Sequence([request])
                )
                _put(ds, elem, "worklist", "COERCE", changes)

    def _apply_rule(
        self, compiled: _CompiledRule, ds: Dataset, order: DatasetView, changes: list[Change]
    ) -> None:
        rule, when = compiled.rule, compiled.when
        view = DatasetView(ds)
        source = f"rule:{rule.name}"
        if when is not None and not _evaluate(rule, "when", partial(when, ds=view, order=order)):
            return
        for keyword, table in rule.map.items():
            where = f"normalize rule {rule.name!r}: {keyword}"
            current = text_of(element_of(ds, keyword))
            lookup = partial(self._templates.tables.lookup, table, current, None)
            mapped = _evaluate(rule, keyword, lookup)
            if mapped is None:
                if rule.strict:
                    raise TransformError(f"{where}: no entry in mapping table {table!r}")
                continue
            _write(
                ds,
                keyword,
                str(mapped),
                where=where,
                source=source,
                reason=rule.reason,
                changes=changes,
            )
        for keyword, template in compiled.templates.items():
            where = f"normalize rule {rule.name!r}: {keyword}"
            rendered = _evaluate(rule, keyword, partial(template.render, ds=view, order=order))
            _write(
                ds,
                keyword,
                str(rendered).strip(),
                where=where,
                source=source,
                reason=rule.reason,
                changes=changes,
            )
        for keyword in rule.remove:
            tag = keyword_tag(keyword)
            if tag in ds:
                changes.append(Change(keyword, source, rule.reason, ds[tag], None))
                del ds[tag]

    def _fit_charset(self, ds: Dataset, changes: list[Change]) -> None:
        """Switch to UTF-8 when a written value cannot be encoded in the image's charset.

        A name from the order (``Müller``) written into an ASCII image would otherwise be
        mangled when the file is written. Every value is decoded first, with the old
        character set, so changing the declared set keeps the other values intact.
        """
        written = [c.new for c in changes if c.new is not None and c.new.VR in _TEXT_VRS]
        old = element_of(ds, "SpecificCharacterSet")
        terms = [str(t) for t in old.value] if old is not None and old.VM > 1 else [text_of(old)]
        # The default repertoire (no or an empty term, ISO_IR 6) is ASCII only, although
        # pydicom reads it leniently as Latin-1: only the other terms' codecs count.
        extended = [t for t in terms if t not in _DEFAULT_REPERTOIRE]
        codecs = convert_encodings(extended) if extended else []
        if all(_encodable(text_of(elem), codecs) for elem in written):
            return
        ds.decode()
        new = DataElement(0x00080005, "CS", "ISO_IR 192")
        ds[0x00080005] = new
        changes.append(Change("SpecificCharacterSet", "charset", "COERCE", old, new))

    def _record(self, ds: Dataset, changes: list[Change]) -> None:
        """Append the previous values to OriginalAttributesSequence, one item per reason."""
        modified: dict[str, Dataset] = {}
        recorded: set[str] = set()
        for change in changes:
            if change.keyword in recorded:
                continue  # the value before the first change is the original one
            recorded.add(change.keyword)
            previous = change.old if change.old is not None else _empty_like(change)
            modified.setdefault(change.reason, Dataset()).add(previous)
        when = self._clock().strftime("%Y%m%d%H%M%S.%f%z")
        items = []
        for reason, attributes in modified.items():
            item = Dataset()
            item.ModifiedAttributesSequence = Sequence([attributes])
            item.AttributeModificationDateTime = when
            item.ModifyingSystem = MODIFYING_SYSTEM
            item.SourceOfPreviousValues = self.config.source_of_previous_values
            item.ReasonForTheAttributeModification = reason
            items.append(item)
        existing = ds.get(_ORIGINAL_ATTRIBUTES)
        ds.OriginalAttributesSequence = Sequence([*(existing or []), *items])


def _evaluate(rule: NormalizeRule, label: str, step: Callable[[], Any]) -> Any:
    """Run one step of a rule; its failures name the rule and the step, never a value."""
    where = f"normalize rule {rule.name!r}: {label}"
    try:
        return step()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (UndefinedError, SecurityError) as exc:
        raise TransformError(f"{where}: {exc}") from exc
    except Exception as exc:
        # Other messages (a failed lookup, a fail() reason...) may quote image values.
        raise TransformError(f"{where}: failed ({type(exc).__name__})") from exc


def _write(
    ds: Dataset,
    keyword: str,
    value: str,
    *,
    where: str,
    source: str,
    reason: Reason,
    changes: list[Change],
) -> None:
    """Set ``keyword`` to the text ``value`` after validating it for the keyword's VR."""
    tag = keyword_tag(keyword)
    if text_of(element_of(ds, keyword)) == value:
        return  # unchanged (or absent and set to empty): nothing to write or record
    check_element(keyword, value, where)  # names the keyword and VR rule, never the value
    try:
        elem = DataElement(tag, dictionary_VR(tag), value, validation_mode=RAISE)
    except (ValueError, TypeError) as exc:
        raise TransformError(f"{where}: not a valid {dictionary_VR(tag)} value") from exc
    _put(ds, elem, source, reason, changes)


def _put(
    ds: Dataset, elem: DataElement, source: str, reason: Reason, changes: list[Change]
) -> None:
    old: DataElement | None = ds.get(elem.tag)
    ds[elem.tag] = elem
    changes.append(Change(elem.keyword, source, reason, old, elem))


def _copied(elem: DataElement) -> DataElement:
    """A copy of an element from the worklist item, sharing nothing mutable with it."""
    if elem.VR == "SQ":
        return DataElement(elem.tag, "SQ", copy.deepcopy(elem.value))
    value = list(elem.value) if elem.VM > 1 else elem.value
    return DataElement(elem.tag, elem.VR, value)


def _empty_like(change: Change) -> DataElement:
    """The empty element recording that ``change`` inserted an attribute."""
    tag = keyword_tag(change.keyword)
    vr = change.new.VR if change.new is not None else dictionary_VR(tag)
    return DataElement(tag, vr, Sequence() if vr == "SQ" else None)


def _encodable(value: str, codecs: list[str]) -> bool:
    if value.isascii():
        return True
    for codec in codecs:
        try:
            value.encode(codec)
        except (UnicodeEncodeError, LookupError):
            continue
        return True
    return False
