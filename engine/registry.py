"""Connector registry: a channel's ``type:`` names a connector, imported only when used.

Each entry maps a type name to its pydantic config class and a factory
``(config, services) -> connector``, both as ``"module:attribute"`` strings so
that loading a channel never imports connectors it does not use. An unknown
type gets a "did you mean" answer.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from engine.errors import ConfigError

__all__ = ["DESTINATIONS", "SOURCES", "ConnectorEntry", "config_class", "factory", "lookup"]

Role = Literal["source", "destination"]


@dataclass(frozen=True)
class ConnectorEntry:
    """Where a connector type's config class and factory live."""

    config: str
    factory: str


SOURCES: dict[str, ConnectorEntry] = {
    "mpps": ConnectorEntry(
        "connectors.dicom_mpps:MPPSSourceConfig", "engine.factories:mpps_source"
    ),
    "channel": ConnectorEntry(
        "connectors.channel:ChannelSourceConfig", "engine.factories:channel_source"
    ),
    "mllp": ConnectorEntry("connectors.mllp:MLLPSourceConfig", "engine.factories:mllp_source"),
    "memory": ConnectorEntry(
        "connectors.memory:MemorySourceConfig", "engine.factories:memory_source"
    ),
    "dicom": ConnectorEntry(
        "connectors.dicom_store:DicomSourceConfig", "engine.factories:dicom_source"
    ),
    "http": ConnectorEntry(
        "connectors.http_source:HttpSourceConfig", "engine.factories:http_source"
    ),
}

DESTINATIONS: dict[str, ConnectorEntry] = {
    "worklist": ConnectorEntry(
        "connectors.worklist:WorklistDestinationConfig", "engine.factories:worklist_destination"
    ),
    "memory": ConnectorEntry(
        "connectors.memory:MemoryDestinationConfig", "engine.factories:memory_destination"
    ),
    "channel": ConnectorEntry(
        "connectors.channel:ChannelForwardConfig", "engine.factories:channel_destination"
    ),
    "dicom": ConnectorEntry(
        "connectors.dicom_send:DicomSendConfig", "engine.factories:dicom_destination"
    ),
    "dicomweb": ConnectorEntry(
        "connectors.dicomweb:DicomWebConfig", "engine.factories:dicomweb_destination"
    ),
    "prefetch": ConnectorEntry(
        "connectors.prefetch:PrefetchConfig", "engine.factories:prefetch_destination"
    ),
    "reading-worklist": ConnectorEntry(
        "connectors.reading_worklist:ReadingWorklistDestinationConfig",
        "engine.factories:reading_worklist_destination",
    ),
    "mllp": ConnectorEntry(
        "connectors.mllp_destination:MLLPDestinationConfig", "engine.factories:mllp_destination"
    ),
    "fhir": ConnectorEntry("connectors.fhir:FhirConfig", "engine.factories:fhir_destination"),
    "report": ConnectorEntry(
        "connectors.report_builder:ReportBuilderConfig", "engine.factories:report_destination"
    ),
    "kserve": ConnectorEntry(
        "connectors.kserve:KServeConfig", "engine.factories:kserve_destination"
    ),
}


def lookup(role: Role, type_name: object) -> ConnectorEntry:
    """The registry entry for ``type_name``; ConfigError with suggestions if unknown."""
    table = SOURCES if role == "source" else DESTINATIONS
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(f"a {role} needs a 'type': one of {', '.join(sorted(table))}")
    entry = table.get(type_name)
    if entry is None:
        close = difflib.get_close_matches(type_name, table, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown {role} type '{type_name}': {hint}known: {', '.join(sorted(table))}"
        )
    return entry


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def config_class(role: Role, type_name: object) -> type[BaseModel]:
    """The pydantic config class of a connector type."""
    cls = _import(lookup(role, type_name).config)
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ConfigError(f"registry entry for '{type_name}' is not a pydantic model")
    return cls


def factory(role: Role, type_name: str) -> Any:
    """The factory of a connector type.

    Sources: ``(config, services, *, channel) -> Source``; destinations:
    ``(config, services, spec, *, channel) -> Destination`` (``spec`` = the engine's fields).
    """
    return _import(lookup(role, type_name).factory)
