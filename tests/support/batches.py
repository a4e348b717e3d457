"""StudyBatch payloads for image destination tests, built from Part 10 files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from engine.study_batch import InstanceRef, StudyBatch

__all__ = ["CT_IMAGE_STORAGE_UID", "batch_json", "batch_json_unchecked"]

CT_IMAGE_STORAGE_UID = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def _batch(study_uid: str, refs: list[InstanceRef]) -> str:
    batch = StudyBatch(
        study_instance_uid=study_uid,
        batch=1,
        calling_aet="CT1",
        called_aet="MERIDIAN",
        instances=refs,
    )
    return batch.model_dump_json()


def batch_json(paths: Sequence[Path]) -> str:
    """A StudyBatch naming ``paths``; each instance's UIDs and syntax read from its file."""
    refs = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        refs.append(
            InstanceRef(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                series_instance_uid=ds.SeriesInstanceUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                path=str(path),
            )
        )
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    return _batch(study_uid, refs)


def batch_json_unchecked(sop_uids: Sequence[str], paths: Sequence[Path]) -> str:
    """A StudyBatch of CT instances whose files may be missing or damaged (nothing is read)."""
    refs = [
        InstanceRef(
            sop_instance_uid=uid,
            sop_class_uid=CT_IMAGE_STORAGE_UID,
            series_instance_uid="1.2.3",
            transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
            path=str(path),
        )
        for uid, path in zip(sop_uids, paths, strict=True)
    ]
    return _batch("1.2.3.4", refs)
