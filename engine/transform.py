"""The transform step: render a channel's template and validate what it produced.

Nothing leaves this step unvalidated: a worklist item that is not a valid
:class:`~engine.worklist_item.WorklistItem` with real DICOM keywords, or an HL7 message
without an MSH, is a :class:`TransformError` here, with a reason an analyst can act on,
rather than a failure later in a destination.

A channel file configures it as::

    transform:
      template: orm_to_mwl.j2
      output: mwl-items        # mwl-items | hl7 | json | yaml | text
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Self

import hl7
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.dicom_checks import check_attributes, check_element
from engine.errors import TransformError
from engine.hl7_view import MessageView
from engine.templating import TemplateEnvironment
from engine.worklist_item import WorklistItem

__all__ = ["HL7Validator", "OutputKind", "TransformConfig", "Transformer"]

OutputKind = Literal["mwl-items", "hl7", "json", "yaml", "text"]

#: An extra check of one rendered HL7 message (ER7 text, CR-separated); raises
#: :class:`TransformError`. The place to plug hl7apy profile validation in later.
HL7Validator = Callable[[str], None]

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")


class TransformConfig(BaseModel):
    """The ``transform:`` block of a channel."""

    model_config = ConfigDict(extra="forbid")

    template: str
    output: OutputKind
    validate_as: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9]{3}_[A-Z0-9]{3}$",
        description="hl7 output: check each message as this HL7 v2 structure (e.g. ORU_R01) "
        "with hl7apy before it is queued",
    )

    @model_validator(mode="after")
    def _validate_as_needs_hl7(self) -> Self:
        if self.validate_as is not None and self.output != "hl7":
            raise ValueError("validate_as applies to output: hl7 only")
        return self


class Transformer:
    """Runs one configured template and returns validated payloads."""

    def __init__(
        self,
        config: TransformConfig,
        env: TemplateEnvironment,
        *,
        hl7_validators: Sequence[HL7Validator] = (),
    ) -> None:
        self.config = config
        self.env = env
        validators = list(hl7_validators)
        if config.validate_as is not None:
            from engine.formats.hl7_validate import validator_for  # hl7apy loaded only when used

            validators.append(validator_for(config.validate_as))
        self._hl7_validators = tuple(validators)

    def check(self) -> None:
        """Compile the template and load every mapping table (:class:`ConfigError` if bad)."""
        self.env.check(self.config.template)
        self.env.tables.check_all()

    def run(self, context: Mapping[str, Any]) -> list[str]:
        """Render for ``context`` and return one payload per destination message.

        * ``mwl-items``: one JSON :class:`WorklistItem` per item of the YAML list rendered.
        * ``hl7``: one ER7 message (CR between segments) per MSH the template wrote.
        * ``json`` / ``yaml`` / ``text``: the rendered document.

        Output that is empty or only whitespace gives ``[]``: the template chose to emit
        nothing for this message.
        """
        output = self.config.output
        kind = "yaml" if output == "mwl-items" else output
        text = self.env.render(self.config.template, kind, context)
        if output == "mwl-items":
            return _worklist_payloads(text)
        if output == "hl7":
            return self._hl7_payloads(text)
        if not text.strip():
            return []
        if output == "json":
            _parse_json(text)
        elif output == "yaml":
            _parse_yaml(text)
        return [text]

    def _hl7_payloads(self, text: str) -> list[str]:
        messages = _split_hl7(text)
        for index, message in enumerate(messages):
            try:
                _check_hl7(message)
                for validator in self._hl7_validators:
                    validator(message)
            except TransformError as exc:
                raise TransformError(f"HL7 message {index}: {exc}") from exc
        return messages


def _worklist_payloads(text: str) -> list[str]:
    data = _parse_yaml(text)
    if data is None:
        return []
    if not isinstance(data, list):
        raise TransformError(
            "template output must be a YAML list of worklist items (each starting with '- ')"
        )
    return [_worklist_item(index, raw).model_dump_json() for index, raw in enumerate(data)]


def _worklist_item(index: int, raw: object) -> WorklistItem:
    try:
        item = WorklistItem.model_validate(raw)
    except ValidationError as exc:
        raise TransformError(f"item {index}: {_describe(exc)}") from exc
    try:
        check_attributes(item.attributes)
        if item.status is not None:
            check_element("ScheduledProcedureStepStatus", item.status, "status")
    except TransformError as exc:
        raise TransformError(f"item {index}: {exc}") from exc
    return item


def _describe(exc: ValidationError) -> str:
    # errors(include_input=False): pydantic's default text quotes the input, i.e. PHI.
    faults = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "item"
        faults.append(f"{where}: {error['msg']}")
    return "; ".join(faults)


# libyaml's C parser is ~10x faster than PyYAML's pure-Python one, and the
# template output is parsed for every message on the hot path.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise TransformError(
            f"template output is not valid YAML (line {line}): {exc.problem}"
        ) from exc
    except yaml.YAMLError as exc:
        raise TransformError(f"template output is not valid YAML: {exc}") from exc


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TransformError(
            f"template output is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from exc


def _split_hl7(text: str) -> list[str]:
    """Template lines → ER7 messages: blank lines dropped, CR between segments, split at MSH."""
    messages: list[list[str]] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        if line.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return ["\r".join(segments) + "\r" for segments in messages]


def _check_hl7(message: str) -> None:
    """Structural checks every HL7 output must pass (hl7apy validation plugs in after)."""
    if not message.startswith("MSH"):
        raise TransformError("does not start with an MSH segment")
    for number, segment in enumerate(message.rstrip("\r").split("\r"), start=1):
        if not _SEGMENT_ID.fullmatch(segment[:3]) or (
            len(segment) > 3 and segment[3] != message[3]
        ):
            raise TransformError(f"segment {number} does not start with a segment ID and '|'")
    try:
        view = MessageView(hl7.parse(message))
    except (hl7.ParseException, ValueError, IndexError) as exc:
        raise TransformError(f"not parseable as HL7: {exc}") from exc
    msh = view.seg("MSH")
    for field, name in (("9", "message type"), ("10", "control ID"), ("12", "version")):
        if not msh[field]:
            raise TransformError(f"MSH-{field} ({name}) is empty")
