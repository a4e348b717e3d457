"""The sandboxed Jinja environment transforms run in.

Templates are ``*.j2`` files in the transforms directory. They run in Jinja's
:class:`~jinja2.sandbox.SandboxedEnvironment` (no access to private attributes, so no
``().__class__.__subclasses__()`` escapes) with :class:`~jinja2.StrictUndefined` (a
misspelt variable is an error, not an empty string). How printed values are quoted or
escaped depends on the output kind: see :mod:`engine.template_output`.

Helpers every template can call (also usable as filters where they take one value):

=========================================  ==================================================
``ts_to_da(ts)`` / ``ts_to_tm(ts)``        HL7 TS → DICOM DA ``YYYYMMDD`` / TM ``HHMMSS``
``xpn_to_pn(xpn)`` / ``xcn_to_pn(xcn)``    HL7 person / staff name → DICOM PN
``priority_from_hl7(code)``                HL7 priority → RequestedProcedurePriority
``lookup(table, key[, default])``          mapping table value (key may be a list of keys)
``lookup_row(table, key[, default])``      the whole row of a mapping table, as a mapping
``uid_from(part, ...)``                    deterministic UID from the parts (same in → same out)
``new_uid()``                              a fresh random UID
``now_da()`` / ``now_tm()``                today / now as DA / TM (local time)
``fail(reason)``                           stop: the message fails with ``reason``
``value | raw``                            write ``value`` without quoting/escaping
=========================================  ==================================================
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from engine.errors import ConfigError, TransformError
from engine.tables import MappingTables
from engine.template_helpers import (
    DEFAULT_UID_ROOT,
    Clock,
    UidFactory,
    fail,
    now_da,
    now_tm,
    priority_from_hl7,
    ts_to_da,
    ts_to_tm,
    xcn_to_pn,
    xpn_to_pn,
)
from engine.template_output import OUTPUT_KINDS, finalizer_for, raw

__all__ = ["TEMPLATE_SUFFIX", "TemplateEnvironment"]

TEMPLATE_SUFFIX = ".j2"


class TemplateEnvironment:
    """Compiles and renders the transforms of one directory.

    ``uid_root`` is the organisation's UID root (ending in ``.``) under which
    ``uid_from``/``new_uid`` generate UIDs; the default is pydicom's root, acceptable
    for trials, but a production site should use its own. ``tables`` defaults to the
    ``tables`` subdirectory; ``clock`` (local time) feeds ``now_da``/``now_tm``.
    """

    def __init__(
        self,
        transforms_dir: Path,
        uid_root: str = DEFAULT_UID_ROOT,
        *,
        tables: MappingTables | None = None,
        clock: Clock = datetime.now,
    ) -> None:
        self.transforms_dir = transforms_dir
        self.tables = tables if tables is not None else MappingTables(transforms_dir / "tables")
        self.uids = UidFactory(uid_root)
        self._clock = clock
        self._loader = FileSystemLoader(str(transforms_dir), encoding="utf-8")
        self._environments: dict[str, SandboxedEnvironment] = {}

    def check(self, template_name: str) -> None:
        """Compile ``template_name``; a syntax error is a :class:`ConfigError` with file:line."""
        self._template(template_name, "text")

    def compile_expression(self, expression: str) -> Callable[..., Any]:
        """Compile a filter expression (``msg.type == "ORM^O01"``) in the same sandbox.

        The result is called with the context as keyword arguments: ``test(msg=view)``.
        A syntax error is a :class:`ConfigError`.
        """
        try:
            return self._environment("text").compile_expression(expression)
        except TemplateSyntaxError as exc:
            raise ConfigError(f"expression syntax error: {exc.message}") from exc

    def compile_template(self, source: str, output: str = "text") -> Template:
        """Compile an inline template (a channel's ``set:`` value) in the same sandbox.

        A syntax error is a :class:`ConfigError` naming the problem (not the source).
        """
        try:
            return self._environment(output).from_string(source)
        except TemplateSyntaxError as exc:
            raise ConfigError(f"template syntax error: {exc.message}") from exc

    def render(self, template_name: str, output: str, context: Mapping[str, Any]) -> str:
        """Render ``template_name`` for ``output`` (yaml, json, hl7 or text).

        Errors while rendering become :class:`TransformError` naming the template file and
        line: ``orm_to_mwl.j2:42: 'msg' has no attribute 'sgs'``. A broken mapping table
        stays a :class:`ConfigError` (with the same location prefix). The message may quote
        a value from the message: treat it as PHI (store it with the message, do not log it).
        """
        template = self._template(template_name, output)
        try:
            return template.render(context)
        except TransformError as exc:
            raise TransformError(f"{self._where(exc, template_name)}: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{self._where(exc, template_name)}: {exc}") from exc
        except SecurityError as exc:
            where = self._where(exc, template_name)
            raise TransformError(f"{where}: not allowed in a template: {exc}") from exc
        except UndefinedError as exc:
            raise TransformError(f"{self._where(exc, template_name)}: {exc.message}") from exc
        except Exception as exc:  # any other runtime error of template code
            where = self._where(exc, template_name)
            raise TransformError(f"{where}: {type(exc).__name__}: {exc}") from exc

    def _template(self, template_name: str, output: str) -> Template:
        if not template_name.endswith(TEMPLATE_SUFFIX):
            raise ConfigError(f"template {template_name!r} must be a {TEMPLATE_SUFFIX} file")
        try:
            return self._environment(output).get_template(template_name)
        except TemplateSyntaxError as exc:
            where = f"{exc.filename or template_name}:{exc.lineno}"
            raise ConfigError(f"{where}: template syntax error: {exc.message}") from exc
        except TemplateNotFound as exc:
            raise ConfigError(f"template {exc.name!r} not found in {self.transforms_dir}") from exc
        except TemplateError as exc:
            raise ConfigError(f"{template_name}: {exc}") from exc

    def _environment(self, output: str) -> SandboxedEnvironment:
        # One environment per output kind: the finalizer is compiled into the template code.
        if output not in OUTPUT_KINDS:
            raise ConfigError(f"unknown template output {output!r}; expected one of {OUTPUT_KINDS}")
        env = self._environments.get(output)
        if env is None:
            env = self._environments[output] = self._new_environment(output)
        return env

    def _new_environment(self, output: str) -> SandboxedEnvironment:
        env = SandboxedEnvironment(
            loader=self._loader,
            undefined=StrictUndefined,
            autoescape=False,
            finalize=finalizer_for(output),
            trim_blocks=True,  # a {% tag %} line leaves no blank line behind
            lstrip_blocks=True,  # ...and no indentation: YAML stays readable
            keep_trailing_newline=True,
        )
        env.globals.update(self._helpers())
        env.filters.update(
            raw=raw,
            ts_to_da=ts_to_da,
            ts_to_tm=ts_to_tm,
            xpn_to_pn=xpn_to_pn,
            xcn_to_pn=xcn_to_pn,
            priority_from_hl7=priority_from_hl7,
        )
        return env

    def _helpers(self) -> dict[str, Any]:
        return {
            "ts_to_da": ts_to_da,
            "ts_to_tm": ts_to_tm,
            "xpn_to_pn": xpn_to_pn,
            "xcn_to_pn": xcn_to_pn,
            "priority_from_hl7": priority_from_hl7,
            "lookup": self.tables.lookup,
            "lookup_row": self.tables.lookup_row,
            "uid_from": self.uids.uid_from,
            "new_uid": self.uids.new_uid,
            "now_da": partial(now_da, self._clock),
            "now_tm": partial(now_tm, self._clock),
            "fail": fail,
        }

    def _where(self, exc: BaseException, template_name: str) -> str:
        """``file:line`` of the innermost template frame of ``exc`` (Jinja maps the lines)."""
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.endswith(TEMPLATE_SUFFIX):
                return f"{self._relative(frame.filename)}:{frame.lineno}"
        return template_name

    def _relative(self, filename: str) -> str:
        try:
            return Path(filename).resolve().relative_to(self.transforms_dir.resolve()).as_posix()
        except ValueError:
            return Path(filename).name
