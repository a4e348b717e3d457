"""The Storage SCP and the ``dicom`` source against real peers: dcmtk storescu and pynetdicom."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

import engine.archive_tables  # noqa: F401 - registers the archive tables
from connectors.base import Origin
from connectors.dicom_mwl import VERIFICATION, DicomListener, DicomListenerConfig
from connectors.dicom_store import (
    CANNOT_UNDERSTAND,
    DATA_SET_MISMATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    DicomSource,
    DicomSourceConfig,
    StorageService,
)
from engine.archive import Archive
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.study_batch import StudyBatch
from tests.support.dicom_files import compress, make_ct_instance, write_dataset, write_study

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
]

HOST = "127.0.0.1"
QUIET = 0.5
PRIVATE_SOP_CLASS = UID("1.2.826.0.1.3680043.8.498.1.999")  # made up: no such storage


@dataclass
class Ingest:
    """The hub's ingest side: listener + storage service + archive, no pipeline."""

    listener: DicomListener
    storage: StorageService
    archive: Archive

    @property
    def port(self) -> int:
        return self.listener.bound_port

    def source(
        self, ae_title: str = "CT_IN", channel: str = "ct-ingest", **config: Any
    ) -> DicomSource:
        settings = {"type": "dicom", "ae_title": ae_title, "quiet_period_seconds": QUIET} | config
        return DicomSource(
            DicomSourceConfig.model_validate(settings),
            channel=channel,
            storage=self.storage,
            archive=self.archive,
        )


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    engine = open_engine(f"sqlite:///{tmp_path / 'var' / 'meridian.db'}")
    committer = GroupCommitter(engine)
    committer.start()
    archive = Archive(tmp_path / "var" / "archive", engine, committer)
    storage = StorageService(archive)
    listener = DicomListener(DicomListenerConfig(host=HOST, port=0))
    listener.add_service(storage)
    listener.start()
    yield Ingest(listener, storage, archive)
    listener.stop()
    committer.stop()
    engine.dispose()


@dataclass
class Collector:
    """The channel's handler: keeps every batch it is given."""

    batches: list[StudyBatch] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)

    async def __call__(self, raw: bytes, origin: Origin) -> bytes | None:
        self.batches.append(StudyBatch.model_validate_json(raw))
        self.origins.append(origin)
        return None


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def storescu(
    port: int,
    *files: Path,
    called: str = "CT_IN",
    calling: str = "MODALITY1",
    options: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu, one association for all ``files``."""
    command = ["storescu", *options, "-aet", calling, "-aec", called, HOST, str(port)]
    command += [str(path) for path in files]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=30
    )


def c_store(
    port: int, item: Dataset | Path, *, called: str = "CT_IN", calling: str = "MODALITY1"
) -> Dataset:
    """pynetdicom SCU; a path is sent byte for byte (chunked), however broken it is."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)
    try:
        status: Dataset = assoc.send_c_store(item)
        assert assoc.send_c_echo().Status == 0x0000  # the association survived
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    return status


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set as encoded (everything after the file meta)."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


# -- a study, its batches, the files -----------------------------------------------------


def test_study_is_one_batch_as_sent_and_a_late_instance_a_second(
    ingest: Ingest, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "in", series=3, per_series=3, rows=64, columns=64)
    late = write_dataset(
        make_ct_instance(study.study_uid, study.series_uids[2], number=9, rows=64, columns=64),
        tmp_path / "late" / "late.dcm",
    )
    handler = Collector()

    async def body() -> None:
        source = ingest.source()
        await source.start(handler)
        started = time.monotonic()
        assert (await storescu(ingest.port, *study.paths)).returncode == 0
        await until(lambda: len(handler.batches) == 1)
        assert time.monotonic() - started >= QUIET
        assert (await storescu(ingest.port, late)).returncode == 0
        await until(lambda: len(handler.batches) == 2)
        await asyncio.sleep(2 * QUIET)  # nothing more comes
        await source.stop()

    run(body)
    first, second = handler.batches
    assert (first.study_instance_uid, first.batch, second.batch) == (study.study_uid, 1, 2)
    assert [i.sop_instance_uid for i in first.instances] == study.sop_uids
    assert [i.sop_instance_uid for i in second.instances] == [str(dcmread(late).SOPInstanceUID)]
    assert handler.origins[0] == Origin("dicom", "MODALITY1", "CT_IN")
    assert first.metadata["Modality"] == "CT" and first.metadata["PatientID"] == "SYN0001"
    assert len(handler.batches) == 2
    for sent, ref in zip([*study.paths, late], [*first.instances, *second.instances], strict=True):
        stored = Path(ref.path)
        assert stored.is_relative_to(ingest.archive.root)
        assert dataset_bytes(stored) == dataset_bytes(sent)  # byte for byte, pixels included
        assert dcmread(stored).file_meta.SourceApplicationEntityTitle == "MODALITY1"


def test_a_study_sent_over_parallel_associations_is_one_batch(
    ingest: Ingest, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "in", series=3, per_series=4)
    per_series = [study.paths[i : i + 4] for i in range(0, 12, 4)]
    handler = Collector()

    async def body() -> None:
        source = ingest.source()
        await source.start(handler)
        sent = await asyncio.gather(*(storescu(ingest.port, *paths) for paths in per_series))
        assert [result.returncode for result in sent] == [0, 0, 0]
        await until(lambda: len(handler.batches) == 1)
        await asyncio.sleep(2 * QUIET)
        await source.stop()

    run(body)
    [batch] = handler.batches
    assert sorted(i.sop_instance_uid for i in batch.instances) == sorted(study.sop_uids)


@pytest.mark.skipif(shutil.which("dcmcrle") is None, reason="dcmtk codecs not installed")
def test_compressed_instances_are_stored_as_received(ingest: Ingest, tmp_path: Path) -> None:
    study = write_study(tmp_path / "in", series=1, per_series=3, rows=64, columns=64)
    # storescu proposes its preferred syntax (-xr/-xs/-xt) *and* the uncompressed
    # ones in one context: the SCP's preference decides that nothing is converted.
    kinds = {"rle": "-xr", "jpeg-lossless": "-xs", "jpeg-ls": "-xt"}
    files = {
        kind: compress(path, tmp_path / "compressed" / f"{kind}.dcm", kind)
        for path, kind in zip(study.paths, kinds, strict=True)
    }

    async def body() -> None:
        source = ingest.source()
        await source.start(Collector())
        for kind, path in files.items():
            sent = await storescu(ingest.port, path, options=(kinds[kind],))
            assert sent.returncode == 0, sent.stderr
        await source.stop()

    run(body)
    for sent in files.values():
        original = dcmread(sent)
        stored = ingest.archive.get_instance("ct-ingest", str(original.SOPInstanceUID))
        assert stored is not None
        assert stored.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        assert (
            dcmread(stored.path).file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        )
        assert dataset_bytes(stored.path) == dataset_bytes(sent)


def test_duplicates_are_ignored_or_overwritten_per_channel(ingest: Ingest, tmp_path: Path) -> None:
    sop = str(generate_uid())
    study, series = str(generate_uid()), str(generate_uid())
    first = write_dataset(make_ct_instance(study, series, sop_uid=sop), tmp_path / "a.dcm")
    again = write_dataset(
        make_ct_instance(study, series, sop_uid=sop, body_part="HEAD"), tmp_path / "b.dcm"
    )

    async def body() -> None:
        keep = ingest.source("KEEP_IN", "keep")
        replace = ingest.source("REPLACE_IN", "replace", duplicates="overwrite")
        await keep.start(Collector())
        await replace.start(Collector())
        for called in ("KEEP_IN", "REPLACE_IN"):
            for path in (first, again):
                assert (await storescu(ingest.port, path, called=called)).returncode == 0
        await keep.stop()
        await replace.stop()

    run(body)
    kept = ingest.archive.get_instance("keep", sop)
    replaced = ingest.archive.get_instance("replace", sop)
    assert kept is not None and replaced is not None
    assert dcmread(kept.path).BodyPartExamined == "CHEST"
    assert dcmread(replaced.path).BodyPartExamined == "HEAD"


# -- refusals; the server keeps serving ------------------------------------------------


def test_malformed_instances_fail_and_the_server_keeps_serving(
    ingest: Ingest, tmp_path: Path
) -> None:
    no_sop = make_ct_instance(str(generate_uid()), str(generate_uid()))
    del no_sop.SOPInstanceUID
    no_sop_path = write_dataset(no_sop, tmp_path / "no-sop.dcm")
    good = write_dataset(
        make_ct_instance(str(generate_uid()), str(generate_uid())), tmp_path / "good.dcm"
    )
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-1000])
    mismatch = make_ct_instance(str(generate_uid()), str(generate_uid()))
    mismatch.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR data set in a CT request
    mismatch_path = tmp_path / "mismatch.dcm"
    mismatch.preamble = b"\x00" * 128
    mismatch.save_as(mismatch_path, enforce_file_format=False)  # keeps the CT file meta

    async def body() -> None:
        source = ingest.source()
        await source.start(Collector())
        missing = await asyncio.to_thread(c_store, ingest.port, no_sop_path)
        assert missing.Status == CANNOT_UNDERSTAND
        assert missing.ErrorComment == "missing SOPInstanceUID"
        cut = await asyncio.to_thread(c_store, ingest.port, truncated)
        assert (cut.Status, cut.ErrorComment) == (CANNOT_UNDERSTAND, "truncated data set")
        wrong = await asyncio.to_thread(c_store, ingest.port, mismatch_path)
        assert wrong.Status == DATA_SET_MISMATCH
        assert (await storescu(ingest.port, good)).returncode == 0
        await source.stop()

    run(body)
    assert ingest.archive.get_instance("ct-ingest", str(dcmread(good).SOPInstanceUID))
    assert ingest.archive.get_instance("ct-ingest", str(mismatch.SOPInstanceUID)) is None


def test_calling_ae_not_allowed_is_refused(ingest: Ingest, tmp_path: Path) -> None:
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()))
    path = write_dataset(ds, tmp_path / "one.dcm")

    async def body() -> None:
        source = ingest.source(allowed_calling_aets=["CT1"])
        await source.start(Collector())
        refused = await asyncio.to_thread(c_store, ingest.port, ds, calling="INTRUDER")
        assert refused.Status == NOT_AUTHORIZED
        assert refused.ErrorComment == "refused: calling AE not allowed"
        assert (await storescu(ingest.port, path, calling="INTRUDER")).returncode != 0
        assert (await storescu(ingest.port, path, calling="CT1")).returncode == 0
        await source.stop()

    run(body)


def test_called_ae_no_channel_serves_is_refused(ingest: Ingest) -> None:
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()))

    async def body() -> None:
        source = ingest.source()
        await source.start(Collector())
        nobody = await asyncio.to_thread(c_store, ingest.port, ds, called="NOBODY")
        assert (nobody.Status, nobody.ErrorComment) == (
            NOT_AUTHORIZED,
            "no channel serves called AE NOBODY",
        )
        await source.stop()
        stopped = await asyncio.to_thread(c_store, ingest.port, ds)  # CT_IN no longer served
        assert stopped.Status == NOT_AUTHORIZED

    run(body)
    assert ingest.archive.get_instance("ct-ingest", str(ds.SOPInstanceUID)) is None


def test_unsupported_sop_class_is_rejected_at_negotiation(ingest: Ingest, tmp_path: Path) -> None:
    private = make_ct_instance(str(generate_uid()), str(generate_uid()))
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    private_path = write_dataset(private, tmp_path / "private.dcm")
    good = write_dataset(
        make_ct_instance(str(generate_uid()), str(generate_uid())), tmp_path / "good.dcm"
    )

    async def body() -> None:
        source = ingest.source()
        await source.start(Collector())
        refused = await storescu(ingest.port, private_path)
        assert refused.returncode != 0
        assert "presentation context" in (refused.stdout + refused.stderr).lower()
        assert (await storescu(ingest.port, good)).returncode == 0
        await source.stop()

    run(body)


def test_disk_failure_is_out_of_resources(ingest: Ingest, tmp_path: Path) -> None:
    ingest.archive.root.mkdir(parents=True, exist_ok=True)
    (ingest.archive.root / "blocked").write_bytes(b"a file where the channel folder goes")
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()))

    async def body() -> None:
        blocked = ingest.source("BLOCKED_IN", "blocked")
        working = ingest.source()
        await blocked.start(Collector())
        await working.start(Collector())
        failed = await asyncio.to_thread(c_store, ingest.port, ds, called="BLOCKED_IN")
        assert failed.Status == OUT_OF_RESOURCES
        assert "archive unavailable" in failed.ErrorComment
        assert (await asyncio.to_thread(c_store, ingest.port, ds)).Status == 0x0000
        await blocked.stop()
        await working.stop()

    run(body)


def test_an_ae_title_serves_one_channel(ingest: Ingest) -> None:
    from engine.errors import ConfigError

    async def body() -> None:
        first = ingest.source("CT_IN", "one")
        await first.start(Collector())
        with pytest.raises(ConfigError, match="already served by channel one"):
            await ingest.source("CT_IN", "two").start(Collector())
        await first.stop()

    run(body)
