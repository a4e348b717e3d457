"""The demo's steps: each does one thing a real site would, then shows what the hub did.

The modality side (C-FIND, C-STORE) is pynetdicom; what the hub did is read
back from its store (audit trail, reading worklist) and what the EHR got from
the stand-ins in :mod:`engine.demo.peers`. Each step raises
:class:`~engine.demo.console.StepError` when something does not happen in time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from sqlalchemy import Engine, select

from engine.audit import AuditEvent, query
from engine.demo.console import TIMES, Console, StepError
from engine.demo.site import HUB_AET, Site
from engine.demo.synthetic import CT_IMAGE_STORAGE, DemoOrder, ct_series, orm_message
from engine.reading_tables import ReadingItem, reading_items

__all__ = ["Run", "ai_result", "find_worklist", "report_to_ehr", "routing", "send_orders",
           "store_studies"]  # fmt: skip

MODALITY_AET = "CTDEMO"
MWL_FIND = UID("1.2.840.10008.5.1.4.31")  # Modality Worklist Information Model - FIND
_PENDING = (0xFF00, 0xFF01)


@dataclass
class Run:
    """What one demo run has done so far (read by the later steps)."""

    site: Site
    store: Engine
    orders: list[DemoOrder]
    tag: str
    timeout: float
    slices: int
    keep_folder: bool = False
    items: dict[str, Dataset] = field(default_factory=dict)  # accession -> MWL item
    studies: dict[str, str] = field(default_factory=dict)  # accession -> Study Instance UID

    @property
    def head(self) -> DemoOrder:
        """The order whose study goes to the AI node."""
        return self.orders[0]

    def events(self, accession: str) -> list[AuditEvent]:
        """The audit trail of one of this run's studies."""
        return query(self.store, study_instance_uid=self.studies[accession])


def send_orders(run: Run, console: Console) -> None:
    """[1] The EHR sends one ORM^O01 per order over MLLP and reads each ACK."""
    from connectors.mllp_client import send_messages

    now = datetime.now()
    messages = [orm_message(o, f"DEMO{run.tag}{n}", now) for n, o in enumerate(run.orders, 1)]
    acks = send_messages("127.0.0.1", run.site.orders_port, messages, run.timeout)
    codes = []
    for order, ack in zip(run.orders, acks, strict=True):
        msa = _segment(ack.decode("latin-1"), "MSA")
        code = msa[1] if len(msa) > 1 else "?"
        codes.append(code)
        echoed = msa[2] if len(msa) > 2 else "?"
        console.detail(
            f"{order.accession}  {order.modality} {order.procedure_text:<26} "
            f"{order.priority_name:<8} → ACK {code} (MSA-2 {echoed})"
        )
    if codes != ["AA"] * len(run.orders):
        raise StepError(f"expected AA for every order, got {', '.join(codes)}")
    console.detail(f"ACK AA {TIMES}{len(codes)}: every order stored before it was acknowledged")


def find_worklist(run: Run, console: Console) -> None:
    """[2] A modality queries the Modality Worklist (C-FIND) for this run's orders."""

    def found() -> dict[str, Dataset] | None:
        items = {str(ds.AccessionNumber): ds for ds in _c_find(run)}
        return items if len(items) >= len(run.orders) else None

    run.items = console.wait("the worklist items", found, run.timeout)
    rows = []
    for order in run.orders:
        item = run.items[order.accession]
        step = item.ScheduledProcedureStepSequence[0]
        start = f"{step.ScheduledProcedureStepStartDate} {step.ScheduledProcedureStepStartTime}"
        rows.append((item.AccessionNumber, item.PatientName, item.PatientID, step.Modality,
                     step.ScheduledStationAETitle or "-", start.strip(),
                     item.get("RequestedProcedurePriority", "") or "-",
                     item.RequestedProcedureDescription))  # fmt: skip
    console.detail(f"C-FIND {MODALITY_AET} → {HUB_AET}@127.0.0.1:{run.site.dicom_port}, "
                   f"AccessionNumber=DM{run.tag}*: {len(run.items)} scheduled item(s)")  # fmt: skip
    header = ("accession", "patient", "ID", "mod", "station", "start", "priority", "procedure")
    console.table(header, rows)


def _c_find(run: Run) -> list[Dataset]:
    identifier = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "RequestedProcedureDescription",
                    "RequestedProcedurePriority"):  # fmt: skip
        setattr(identifier, keyword, "")
    identifier.AccessionNumber = f"DM{run.tag}*"
    step = Dataset()
    for keyword in (
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepDescription",
    ):
        setattr(step, keyword, "")
    identifier.ScheduledProcedureStepSequence = [step]
    ae = AE(ae_title=MODALITY_AET)
    ae.add_requested_context(MWL_FIND)
    assoc = ae.associate("127.0.0.1", run.site.dicom_port, ae_title=HUB_AET)
    if not assoc.is_established:
        raise StepError(f"the hub refused the C-FIND association on port {run.site.dicom_port}")
    try:
        responses = assoc.send_c_find(identifier, MWL_FIND)
        return [ds for status, ds in responses
                if status is not None and status.Status in _PENDING and ds is not None]  # fmt: skip
    finally:
        assoc.release()


def store_studies(run: Run, console: Console) -> None:
    """[3] The CT scanner stores the head study (and the STAT chest) with C-STORE."""
    chest = run.orders[1]
    series = {
        run.head.accession: ct_series(run.items[run.head.accession], "HEAD",
                                      run.head.procedure_text, slices=run.slices,
                                      hyperdense=True),
        chest.accession: ct_series(run.items[chest.accession], "CHEST", chest.procedure_text,
                                   slices=3, hyperdense=False),
    }  # fmt: skip
    ae = AE(ae_title=MODALITY_AET)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", run.site.dicom_port, ae_title=HUB_AET)
    if not assoc.is_established:
        raise StepError(f"the hub refused the C-STORE association on port {run.site.dicom_port}")
    statuses: list[int] = []
    try:
        for datasets in series.values():
            for ds in datasets:
                status = assoc.send_c_store(ds)
                statuses.append(int(status.Status) if status is not None else -1)
    finally:
        assoc.release()
    for accession, datasets in series.items():
        run.studies[accession] = str(datasets[0].StudyInstanceUID)
        what = "with a 2 mL 70 HU region" if accession == run.head.accession else "normal"
        console.detail(f"{accession}  {datasets[0].StudyDescription:<26} {len(datasets):>2} "
                       f"slices 64{TIMES}64, {what}")  # fmt: skip
        console.detail(f"           Study Instance UID {run.studies[accession]} (from the MWL)")
    ok = statuses.count(0)
    console.detail(
        f"C-STORE {MODALITY_AET} → {HUB_AET}: {ok}/{len(statuses)} {TIMES} Success (0x0000)"
    )
    if ok != len(statuses):
        raise StepError(f"{len(statuses) - ok} instance(s) were not stored")


def routing(run: Run, console: Console) -> None:
    """[4] Both studies complete after the quiet period, are routed and put on the worklist."""
    head = run.head.accession

    def done() -> dict[str, list[AuditEvent]] | None:
        trails = {accession: run.events(accession) for accession in run.studies}
        listed = all(any(e.kind == "worklist_added" for e in t) for t in trails.values())
        asked = any(e.kind == "ai_requested" for e in trails[head])
        return trails if listed and asked else None

    trails = console.wait("study assembly, routing and the AI request", done, run.timeout)
    for accession, events in trails.items():
        routed = [e for e in events if e.kind == "routed"]
        console.detail(f"{accession}: routed to {len(routed)} destination(s)")
        for event in routed:
            model = f"  model {event.model} {event.model_version}" if event.model else ""
            console.detail(f"  → {event.destination:<17} rule: {event.rule}{model}")
        added = next(e for e in events if e.kind == "worklist_added").detail
        console.detail(
            f"  on the reading worklist as {added.get('order_priority')} "
            f"({added.get('subspecialty') or 'no subspecialty'}), "
            f"priority score {added.get('priority', 0):.0f}"
        )
    ask = next(e for e in trails[head] if e.kind == "ai_requested")
    instances, mode = ask.detail.get("instances"), ask.detail.get("mode")
    console.detail(
        f"{head}: sent to the AI node ({instances} instances), "
        f"model {ask.model} {ask.model_version}, mode {mode}"
    )


def ai_result(run: Run, console: Console) -> None:
    """[5] The AI node's SR/GSPS come back; the reading worklist is re-prioritized."""
    head = run.head.accession

    def applied() -> AuditEvent | None:
        return next((e for e in run.events(head) if e.kind == "worklist_reprioritized"), None)

    change = console.wait("the AI result", applied, run.timeout)
    result = next(e for e in run.events(head) if e.kind == "ai_result")
    items = _reading(run)
    item = items[head]
    source, mode = result.detail.get("source"), result.detail.get("mode")
    critical = "yes" if item.ai_critical else "no"
    console.detail(
        f"{result.model} {result.model_version} ({source} result, mode {mode}): "
        f"{result.detail.get('findings')} finding(s), critical {critical}"
    )
    for entry in item.ai_findings.values():
        for finding in entry.get("findings", []):
            flag = "  CRITICAL" if finding.get("critical") else ""
            console.detail(f"  {finding.get('label')}: score {finding.get('score', 0):.2f}{flag}")
    old, new = change.detail.get("old"), change.detail.get("new")
    console.detail(f"{head} priority score {old:.0f} → {new:.0f} ({change.detail.get('outcome')})")
    after = {accession: it.priority_score for accession, it in items.items()}
    before = {**after, head: float(old) if old is not None else item.priority_score}
    console.detail("reading worklist before → after the AI result:")
    rows = [
        (accession, f"#{_rank(before, accession)}", f"#{_rank(after, accession)}",
         it.order_priority, "CRITICAL" if it.ai_critical else "-")
        for accession, it in sorted(items.items(), key=lambda pair: -pair[1].priority_score)
    ]  # fmt: skip
    console.table(("", "before", "after", "order", "AI"), rows)


def _reading(run: Run) -> dict[str, ReadingItem]:
    statement = select(reading_items).where(
        reading_items.c.study_instance_uid.in_(list(run.studies.values()))
    )
    with run.store.connect() as conn:
        rows = conn.execute(statement).mappings().all()
    return {str(row["accession_number"]): ReadingItem.from_row(row) for row in rows}


def _rank(scores: dict[str, float], accession: str) -> int:
    return 1 + sum(1 for other, score in scores.items() if score > scores[accession])


def report_to_ehr(run: Run, console: Console) -> None:
    """[6] The AI-drafted preliminary report reaches the EHR as ORU^R01 and FHIR."""
    head = run.head.accession

    def oru() -> str | None:
        return next((m for m in run.site.ehr_mllp.received() if f"|{head}|" in m), None)

    message = console.wait("the ORU^R01 at the EHR", oru, run.timeout)
    console.detail(
        f"ORU^R01 received by the EHR (MLLP port {run.site.ehr_mllp.port}), answered AA:"
    )
    for segment in message.replace("\n", "\r").split("\r"):
        if segment[:3] in ("MSH", "PID", "OBR", "OBX"):
            console.detail("  " + (segment if len(segment) <= 96 else segment[:93] + "..."))

    def report() -> dict[str, Any] | None:
        reports = run.site.ehr_fhir.resources("DiagnosticReport")
        ours = (r for r in reports if any(i.get("value") == head for i in r.get("identifier", [])))
        return next(ours, None)

    diagnostic = console.wait("the FHIR DiagnosticReport", report, run.timeout)
    kinds: dict[str, int] = {}
    for kind in ("DiagnosticReport", "ImagingStudy", "Observation"):
        kinds[kind] = len(run.site.ehr_fhir.resources(kind))
    console.detail(f"FHIR R4 transaction received ({run.site.ehr_fhir.url}): "
                   + ", ".join(f"{kind} {TIMES}{n}" for kind, n in kinds.items()))  # fmt: skip
    code = (diagnostic.get("code") or {}).get("text") or "-"
    console.detail(f"  DiagnosticReport {head}: status {diagnostic.get('status')}, {code}")
    for study in run.site.ehr_fhir.resources("ImagingStudy"):
        uids = [i.get("value", "") for i in study.get("identifier", [])]
        if any(run.studies[head] in uid for uid in uids):
            console.detail(f"  ImagingStudy {uids[0]}: status {study.get('status')}")


def _segment(message: str, name: str) -> list[str]:
    for segment in message.replace("\n", "\r").split("\r"):
        if segment.startswith(name + "|"):
            return segment.split("|")
    return []
