"""Build ORM^O01 / OMI^O23 test messages the way EHRs send them."""

from __future__ import annotations

import itertools

_counter = itertools.count(1)


def control_id() -> str:
    """A fresh MSH-10."""
    return f"T{next(_counter):06d}"


def msh(
    message_type: str, version: str = "2.5.1", charset: str = "", mcid: str | None = None
) -> str:
    """An MSH segment from sending app RIS at HOSP."""
    fields = [
        "MSH",
        "^~\\&",
        "RIS",
        "HOSP",
        "MERIDIAN",
        "RAD",
        "20261123101500",
        "",
        message_type,
        mcid or control_id(),
        "P",
        version,
        "",
        "",
        "",
        "",
        "",
        charset,
    ]
    return "|".join(fields).replace("MSH|^", "MSH|^", 1)


def orm(
    *,
    control: str = "NW",
    placer: str = "PL1001",
    patient_id: str = "PAT1001",
    name: str = "DOE^JANE^Q",
    accession: str = "ACC1001",
    modality: str = "CT",
    start: str = "202611231030",
    procedure: str = "CTHEAD^CT Head without contrast^LOCAL",
    status: str = "",
    version: str = "2.5.1",
    charset: str = "",
    extra_orders: list[tuple[str, str, str, str]] | None = None,
    mcid: str | None = None,
) -> str:
    """An ORM^O01, one ORC/OBR group per order.

    ``extra_orders`` adds groups as (placer, accession, modality, procedure).
    """
    segments = [
        msh("ORM^O01", version, charset, mcid),
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||19800101|F",
        "PV1|1|O|CT1^^^RAD",
    ]
    orders = [(placer, accession, modality, procedure), *(extra_orders or [])]
    for index, (plc, acc, mod, proc) in enumerate(orders, start=1):
        sps_id = f"SPS{acc}"
        segments += [
            f"ORC|{control}|{plc}|F{plc}||{status}||^^^{start}^^R",
            _segment(
                "OBR",
                {
                    1: str(index),
                    2: plc,
                    3: f"F{plc}",
                    4: proc,
                    18: acc,
                    19: f"RP{acc}",
                    20: sps_id,
                    24: mod,
                },
            ),
        ]
    return "\r".join(segments) + "\r"


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields at their HL7 positions."""
    values = [""] * (max(fields) + 1)
    values[0] = name
    for position, value in fields.items():
        values[position] = value
    return "|".join(values)
