"""A channel's processing steps, compiled once: filters, transform, destination routing.

Pure: evaluating them reads the message context and renders templates, nothing else.
The live pipeline (:class:`engine.pipeline.ChannelRuntime`) and the template test bench
(:mod:`engine.testbench`) both run these, so what the bench shows is what the hub does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import Template

from engine.config import AIModelConfig, Channel, ChannelDestination, FilterRule
from engine.datatypes.base import DataType, ReadMessage
from engine.errors import FilterError, TransformError
from engine.store.messages import QueueItem, order_key_value
from engine.templating import TemplateEnvironment
from engine.transform import Transformer

__all__ = ["ChannelSteps", "CompiledFilter", "DestinationStep"]


@dataclass(frozen=True)
class CompiledFilter:
    """A filter rule compiled once at deploy time."""

    name: str
    test: Callable[..., Any]

    def passes(self, context: dict[str, Any]) -> bool:
        """Evaluate the rule; an evaluation error is a FilterError naming the rule."""
        try:
            return bool(self.test(**context))
        except Exception as exc:
            raise FilterError(f"filter '{self.name}' failed: {exc}") from exc


@dataclass(frozen=True)
class DestinationStep:
    """One destination's routing rules and its own transform (if any)."""

    name: str
    filters: list[CompiledFilter]
    transformer: Transformer | None
    ai: AIModelConfig | None = None
    order_key: Template | None = None

    def key(self, context: dict[str, Any], default: str | None) -> str | None:
        """The order key of this destination's entries (``queue.order_key``, else ``default``).

        A template that fails is a TransformError naming the destination (the message
        is stored as ERROR, like a failing transform).
        """
        if self.order_key is None:
            return order_key_value(default)
        try:
            return order_key_value(self.order_key.render(context))
        except TransformError as exc:
            raise TransformError(f"order key of destination '{self.name}': {exc}") from exc
        except Exception as exc:  # any runtime error of template code
            reason = f"{type(exc).__name__}: {exc}"
            raise TransformError(f"order key of destination '{self.name}': {reason}") from exc

    def accepts(self, context: dict[str, Any]) -> bool:
        """Whether every routing rule passes (the first that fails ends the check)."""
        return all(f.passes(context) for f in self.filters)

    def outputs(self, context: dict[str, Any], payloads: list[str]) -> list[str]:
        """What this destination is given for the channel's ``payloads``."""
        if self.transformer is None:
            return list(payloads)
        outputs: list[str] = []
        for payload in payloads:
            outputs.extend(self.transformer.run({**context, "payload": payload}))
        return outputs


class ChannelSteps:
    """The compiled steps of one channel; a filter syntax error is a ConfigError.

    Disabled destinations are left out unless ``include_disabled`` (the test bench
    shows them too); their order follows the channel file.
    """

    def __init__(
        self, channel: Channel, templates: TemplateEnvironment, *, include_disabled: bool = False
    ) -> None:
        self._templates = templates
        self.filters = [self.compile(rule) for rule in channel.file.filters]
        self.transformer = (
            Transformer(channel.file.transform, templates)
            if channel.file.transform is not None
            else None
        )
        self.destinations = [
            self._destination_step(d)
            for d in channel.destinations
            if include_disabled or d.spec.enabled
        ]

    def compile(self, rule: FilterRule) -> CompiledFilter:
        """Compile one filter rule in the channel's template sandbox."""
        return CompiledFilter(rule.name, self._templates.compile_expression(rule.when))

    def _destination_step(self, destination: ChannelDestination) -> DestinationStep:
        spec = destination.spec
        transformer = Transformer(spec.transform, self._templates) if spec.transform else None
        filters = [self.compile(rule) for rule in spec.filters]
        key = spec.queue.order_key
        order_key = self._templates.compile_template(key) if key is not None else None
        return DestinationStep(spec.name, filters, transformer, spec.ai, order_key)

    def accepts(self, context: dict[str, Any]) -> bool:
        """Whether every channel filter passes (the first that fails ends the check)."""
        return all(f.passes(context) for f in self.filters)

    def transform(self, datatype: DataType, message: ReadMessage) -> tuple[list[str], str | None]:
        """The payloads for the destinations, and the transformed content to store."""
        builtin = datatype.builtin_transform(message)
        if builtin is not None:
            return builtin, "\n".join(builtin)
        if self.transformer is not None:
            payloads = self.transformer.run(message.context)
            return payloads, "\n".join(payloads)
        return [message.payload], None

    def route(
        self, context: dict[str, Any], payloads: list[str], default_key: str | None = None
    ) -> list[QueueItem]:
        """The queue entries: each destination whose rules pass gets its outputs.

        Each entry carries its order key (``default_key``, the patient ID, unless the
        destination's ``queue.order_key`` says otherwise).
        """
        items: list[QueueItem] = []
        for step in self.destinations:
            if step.accepts(context):
                key = step.key(context, default_key)
                outputs = step.outputs(context, payloads)
                items.extend(QueueItem(step.name, out, key) for out in outputs)
        return items
