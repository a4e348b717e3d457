"""A modality querying the worklist: pynetdicom SCU and dcmtk findscu."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

RETURN_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyInstanceUID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
]
SPS_KEYS = [
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepStatus",
]


def mwl_query(port: int, *, calling_aet: str = "MODALITY1", **match: str) -> list[Dataset]:
    """C-FIND the hub's worklist with pynetdicom; ``match`` keys may be SPS keys too."""
    query = Dataset()
    for key in RETURN_KEYS:
        setattr(query, key, match.get(key, ""))
    sps = Dataset()
    for key in SPS_KEYS:
        setattr(sps, key, match.get(key, ""))
    query.ScheduledProcedureStepSequence = [sps]
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MERIDIAN")
    assert assoc.is_established, "association with the hub was not established"
    results: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status is not None, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                results.append(identifier)
            elif status.Status != 0x0000:
                raise AssertionError(f"C-FIND failed with status 0x{status.Status:04X}")
    finally:
        assoc.release()
    return results


def findscu(
    port: int, outdir: Path, keys: list[str], calling_aet: str = "MODALITY1"
) -> list[Dataset]:
    """Query with dcmtk ``findscu -W`` and read the responses it extracts to files."""
    outdir.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-W", "-aet", calling_aet, "-aec", "MERIDIAN", "-X", "-od", str(outdir)]
    for key in keys:
        args += ["-k", key]
    completed = subprocess.run(
        [*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return [dcmread(path) for path in sorted(outdir.glob("rsp*.dcm"))]
