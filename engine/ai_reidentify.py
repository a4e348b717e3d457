"""Mapping AI results back to the real patient, whichever de-identified destination they answer.

An AI that was sent de-identified images (a destination marked ``external``, scope
``"<channel>/<destination>"``) answers with the pseudo UIDs it was given. For each
result the scopes are tried in order: :meth:`Deidentifier.reidentify` restores the
originals, and the first scope under which some UID of the result actually maps back
is taken. Checking that a UID changed matters: a result that references the *original*
study (an internal AI) would otherwise also be "found" through the study's mapping
row, and its dates shifted back although they were never shifted.

A result no scope knows is left as it is (an internal AI, or a scope that is not
configured). Mapping-table failures (:class:`~engine.errors.StoreError`) propagate:
the message must be retried, not filed under the wrong patient.
"""

from __future__ import annotations

from pydicom import Dataset, Sequence

from engine.ai_result import AIResult
from engine.deid import Deidentifier
from engine.errors import TransformError

__all__ = ["Reidentifier"]


class Reidentifier:
    """Re-identifies DICOM and JSON results for the first scope that knows them."""

    def __init__(self, deid: Deidentifier | None, scopes: list[str]) -> None:
        self._deid = deid
        self._scopes = list(scopes) if deid is not None else []

    def dataset(self, ds: Dataset) -> Dataset:
        """``ds`` re-identified (a copy), or ``ds`` itself when no scope knows its UIDs."""
        if self._deid is None:
            return ds
        before = _uids(ds)
        for scope in self._scopes:
            try:
                out = self._deid.reidentify(ds, destination=scope)
            except TransformError:
                continue  # nobody of this scope's in it
            if _uids(out) != before:
                return out
        return ds

    def result(self, result: AIResult) -> tuple[AIResult, str | None]:
        """A JSON result with its study, accession and images mapped back, and the patient.

        Returns ``(result, None)`` itself when no scope knows its study or images.
        """
        if not self._scopes:
            return result, None
        probe = _probe(result)
        back = self.dataset(probe)
        if back is probe:
            return result, None
        images = iter(item.ReferencedSOPInstanceUID for item in back.ReferencedSOPSequence)
        findings = [
            finding.model_copy(update={"referenced_sop_instance_uid": next(images)})
            if finding.referenced_sop_instance_uid
            else finding
            for finding in result.findings
        ]
        mapped = result.model_copy(
            update={
                "study_instance_uid": str(back.StudyInstanceUID),
                # The AI's accession is the pseudonym's (empty): the original, or none.
                "accession_number": str(back.get("AccessionNumber") or "") or None,
                "findings": findings,
            }
        )
        return mapped, str(back.get("PatientID") or "") or None


def _probe(result: AIResult) -> Dataset:
    """A dataset holding the UIDs of a JSON result, for :meth:`Deidentifier.reidentify`."""
    probe = Dataset()
    probe.StudyInstanceUID = result.study_instance_uid
    items = []
    for finding in result.findings:
        if finding.referenced_sop_instance_uid:
            item = Dataset()
            item.ReferencedSOPInstanceUID = finding.referenced_sop_instance_uid
            items.append(item)
    probe.ReferencedSOPSequence = Sequence(items)
    return probe


def _uids(ds: Dataset) -> list[str]:
    """Every UID value in ``ds``, nested ones included, in order."""
    found: list[str] = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found.extend(_uids(item))
        elif elem.VR == "UI" and elem.value:
            found.extend(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))
    return found
