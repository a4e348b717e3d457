"""The archive and its index on SQLite and PostgreSQL; what a received instance must be."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

import engine.archive_tables  # noqa: F401 - registers the archive tables
from engine.archive import Archive, ChannelPolicy, Stored
from engine.archive_tables import COMPLETE, RECEIVING, archive_studies
from engine.dicom_instance import InstanceHeader, file_head, read_instance
from engine.errors import ConfigError, ParseError, StoreError
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from tests.support.databases import store_url
from tests.support.dicom_files import compress, make_ct_instance, write_dataset

pytestmark = pytest.mark.timeout(60)

CT = ChannelPolicy("ct-ingest")
T = TypeVar("T")


class FakeClock:
    """The archive's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2024, 1, 5, 8, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Store:
    archive: Archive
    engine: Engine
    committer: GroupCommitter
    clock: FakeClock


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    for url in store_url(request.param, tmp_path):
        engine = open_engine(url)
        committer = GroupCommitter(engine)
        committer.start()
        clock = FakeClock()
        yield Store(
            Archive(tmp_path / "archive", engine, committer, clock=clock), engine, committer, clock
        )
        committer.stop()
        engine.dispose()


def part10(ds: Dataset) -> tuple[bytes, InstanceHeader]:
    """A dataset as the SCP would write it, and its header."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    syntax = str(ds.file_meta.TransferSyntaxUID)
    return data, read_instance(data[_dataset_offset(data) :], syntax)


def _dataset_offset(data: bytes) -> int:
    group_length: int = struct.unpack_from("<L", data, 132 + 8)[0]
    return 132 + 12 + group_length


def instance(study: str, series: str | None = None, **kw: object) -> tuple[bytes, InstanceHeader]:
    series = series or str(generate_uid(entropy_srcs=[study, "series"]))
    return part10(make_ct_instance(study, series, **kw))  # type: ignore[arg-type]


def put(store: Store, data: bytes, header: InstanceHeader, policy: ChannelPolicy = CT) -> Stored:
    return store.archive.store(data, header, calling_aet="MOD1", called_aet="CT_IN", policy=policy)


def unit(store: Store, key: str, channel: str = CT.channel) -> dict[str, object]:
    query = select(archive_studies).where(
        archive_studies.c.channel == channel, archive_studies.c.assembly_key == key
    )
    with store.engine.connect() as conn:
        return dict(conn.execute(query).one()._mapping)


# -- storing ------------------------------------------------------------------------


def test_store_writes_the_file_under_uids_and_indexes_it(store: Store) -> None:
    study = str(generate_uid())
    data, header = instance(study, patient=None)
    assert put(store, data, header) is Stored.STORED

    found = store.archive.get_instance(CT.channel, header.sop_instance_uid)
    assert found is not None
    expected = (
        store.archive.root / CT.channel / study / header.series_instance_uid
        / f"{header.sop_instance_uid}.dcm"
    )  # fmt: skip
    assert found.path == expected
    assert expected.read_bytes() == data
    assert (found.size, found.batch, found.calling_aet) == (len(data), 1, "MOD1")
    # Only UIDs and the channel name in the path: no PHI.
    assert "SYN0001" not in str(expected) and "Synthetic" not in str(expected)
    assert not list(expected.parent.glob(".*.tmp"))
    row = unit(store, study)
    assert (row["status"], row["batch"], row["instance_count"]) == (RECEIVING, 1, 1)


def test_duplicate_is_ignored_without_rewriting(store: Store) -> None:
    study, sop = str(generate_uid()), str(generate_uid())
    first, header = instance(study, sop_uid=sop, body_part="CHEST")
    put(store, first, header)
    second, header2 = instance(study, sop_uid=sop, body_part="HEAD")
    assert put(store, second, header2) is Stored.DUPLICATE
    found = store.archive.get_instance(CT.channel, sop)
    assert found is not None and found.path.read_bytes() == first
    assert unit(store, study)["instance_count"] == 1


def test_duplicate_overwrite_replaces_file_and_row(store: Store) -> None:
    policy = ChannelPolicy("ct-ingest", duplicates="overwrite")
    study, sop = str(generate_uid()), str(generate_uid())
    first, header = instance(study, sop_uid=sop, rows=8, columns=8)
    put(store, first, header, policy)
    second, header2 = instance(study, sop_uid=sop, rows=16, columns=16)
    assert put(store, second, header2, policy) is Stored.REPLACED
    found = store.archive.get_instance(policy.channel, sop)
    assert found is not None
    assert found.path.read_bytes() == second and found.size == len(second)
    assert unit(store, study)["instance_count"] == 1


def test_each_channel_keeps_its_own_copy(store: Store) -> None:
    data, header = instance(str(generate_uid()))
    other = ChannelPolicy("pacs-ingest")
    assert put(store, data, header) is Stored.STORED
    assert put(store, data, header, other) is Stored.STORED
    a = store.archive.get_instance(CT.channel, header.sop_instance_uid)
    b = store.archive.get_instance(other.channel, header.sop_instance_uid)
    assert a is not None and b is not None and a.path != b.path


def test_disk_failure_is_a_store_error_and_indexes_nothing(store: Store) -> None:
    blocked = ChannelPolicy("blocked")
    store.archive.root.mkdir(parents=True, exist_ok=True)
    (store.archive.root / "blocked").write_bytes(b"a file where a folder should be")
    data, header = instance(str(generate_uid()))
    with pytest.raises(StoreError, match="archive write failed"):
        put(store, data, header, blocked)
    assert store.archive.get_instance("blocked", header.sop_instance_uid) is None


def test_index_failure_is_a_store_error(store: Store) -> None:
    store.committer.stop()
    data, header = instance(str(generate_uid()))
    with pytest.raises(StoreError):
        put(store, data, header)


def test_channel_names_must_be_path_safe() -> None:
    with pytest.raises(ConfigError):
        ChannelPolicy("../etc")


# -- units and batches ----------------------------------------------------------------


def test_quiet_unit_completes_and_a_late_instance_opens_batch_two(store: Store) -> None:
    archive, channel = store.archive, CT.channel
    study = str(generate_uid())
    for n in range(3):
        put(store, *instance(study, number=n + 1))
    assert not archive.has_quiet(channel, 10)
    store.clock.advance(11)
    assert archive.has_quiet(channel, 10)
    assert _run(archive.complete_quiet(channel, 10)) == 1
    [pending] = archive.pending(channel)
    assert (pending.assembly_key, list(pending.batches())) == (study, [1])
    assert len(archive.batch_instances(channel, study, 1)) == 3
    _run(archive.mark_dispatched(channel, study, 1))
    assert archive.pending(channel) == []

    late, header = instance(study, number=9)
    put(store, late, header)
    row = unit(store, study)
    assert (row["status"], row["batch"], row["instance_count"]) == (RECEIVING, 2, 4)
    assert [r.sop_instance_uid for r in archive.batch_instances(channel, study, 2)] == [
        header.sop_instance_uid
    ]
    store.clock.advance(11)
    _run(archive.complete_quiet(channel, 10))
    assert [list(p.batches()) for p in archive.pending(channel)] == [[2]]
    assert unit(store, study)["status"] == COMPLETE


def test_late_instance_before_dispatch_keeps_both_batches(store: Store) -> None:
    archive, channel = store.archive, CT.channel
    study = str(generate_uid())
    put(store, *instance(study, number=1))
    store.clock.advance(11)
    _run(archive.complete_quiet(channel, 10))
    put(store, *instance(study, number=2))  # batch 1 not dispatched yet
    store.clock.advance(11)
    _run(archive.complete_quiet(channel, 10))
    [pending] = archive.pending(channel)
    assert list(pending.batches()) == [1, 2]
    _run(archive.mark_dispatched(channel, study, 1))
    assert [list(p.batches()) for p in archive.pending(channel)] == [[2]]


def test_group_by_series_makes_one_unit_per_series(store: Store) -> None:
    policy = ChannelPolicy("ct-series", group_by="series")
    study = str(generate_uid())
    series = [str(generate_uid()), str(generate_uid())]
    for uid in series:
        put(store, *instance(study, uid), policy=policy)
    store.clock.advance(11)
    assert _run(store.archive.complete_quiet(policy.channel, 10)) == 2
    pending = store.archive.pending(policy.channel)
    assert sorted(p.assembly_key for p in pending) == sorted(series)
    assert {p.study_instance_uid for p in pending} == {study}


def test_overwrite_after_completion_is_a_follow_up(store: Store) -> None:
    policy = ChannelPolicy("ct-ingest", duplicates="overwrite")
    study, sop = str(generate_uid()), str(generate_uid())
    put(store, *instance(study, sop_uid=sop), policy=policy)
    store.clock.advance(11)
    _run(store.archive.complete_quiet(policy.channel, 10))
    _run(store.archive.mark_dispatched(policy.channel, study, 1))
    put(store, *instance(study, sop_uid=sop, rows=8, columns=8), policy=policy)
    refs = store.archive.batch_instances(policy.channel, study, 2)
    assert [r.sop_instance_uid for r in refs] == [sop]


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


# -- what a received instance must be ---------------------------------------------------


@pytest.fixture(scope="module")
def encodings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One CT image in several transfer syntaxes (dcmtk converts)."""
    folder = tmp_path_factory.mktemp("encodings")
    source = write_dataset(
        make_ct_instance(str(generate_uid()), str(generate_uid()), rows=64, columns=64),
        folder / "explicit.dcm",
    )
    files = {"explicit": source}
    for kind in ("rle", "jpeg-lossless", "jpeg-ls"):
        if shutil.which("dcmcrle"):
            files[kind] = compress(source, folder / f"{kind}.dcm", kind)
    if shutil.which("dcmconv"):
        import subprocess

        for flag, kind in (("+ti", "implicit"), ("+tb", "big-endian"), ("+td", "deflated")):
            target = folder / f"{kind}.dcm"
            subprocess.run(["dcmconv", flag, str(source), str(target)], check=True)
            files[kind] = target
    return files


def _read(path: Path, cut: int = 0) -> InstanceHeader:
    data = path.read_bytes()
    if cut:
        data = data[:-cut]
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return read_instance(data[_dataset_offset(data) :], ts)


@pytest.mark.parametrize(
    "kind", ["explicit", "implicit", "big-endian", "deflated", "rle", "jpeg-lossless", "jpeg-ls"]
)
def test_every_encoding_reads_and_truncation_is_refused(
    encodings: dict[str, Path], kind: str
) -> None:
    if kind not in encodings:
        pytest.skip("dcmtk not installed")
    header = _read(encodings[kind])
    assert (header.modality, header.patient_id) == ("CT", "SYN0001")
    dataset_size = len(data := encodings[kind].read_bytes()) - _dataset_offset(data)
    for cut in (1, 100, dataset_size // 2):
        with pytest.raises(ParseError, match="truncated"):
            _read(encodings[kind], cut)


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_refused(keyword: str) -> None:
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()))
    delattr(ds, keyword)
    with pytest.raises(ParseError, match=f"missing {keyword}"):
        part10(ds)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uid_that_is_not_a_uid_is_refused() -> None:
    ds = make_ct_instance("1.2.3", "1.2.3.4")
    ds.StudyInstanceUID = "../../etc"
    with pytest.raises(ParseError, match="invalid StudyInstanceUID"):
        part10(ds)


def test_ids_are_read_in_the_data_set_character_set() -> None:
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()), accession="Ä1")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = "MÜLLER-7"
    data, header = part10(ds)
    assert "MÜLLER-7".encode("latin-1") in data
    assert (header.patient_id, header.accession_number) == ("MÜLLER-7", "Ä1")


def test_an_orphan_file_from_a_crash_is_indexed_when_resent(store: Store) -> None:
    study = str(generate_uid())
    data, header = instance(study)
    path = (
        store.archive.root / CT.channel / study / header.series_instance_uid
        / f"{header.sop_instance_uid}.dcm"
    )  # fmt: skip
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")  # written, then the process died before the index commit
    assert put(store, data, header) is Stored.STORED
    assert path.read_bytes() == data
    assert unit(store, study)["instance_count"] == 1


@pytest.mark.parametrize(
    ("duplicates", "outcome"), [("ignore", "duplicate"), ("overwrite", "replaced")]
)
def test_a_row_whose_file_went_missing_follows_the_duplicate_policy(
    store: Store, duplicates: str, outcome: str
) -> None:
    policy = ChannelPolicy("ct-ingest", duplicates=duplicates)  # type: ignore[arg-type]
    study = str(generate_uid())
    data, header = instance(study)
    put(store, data, header, policy)
    found = store.archive.get_instance(policy.channel, header.sop_instance_uid)
    assert found is not None
    found.path.unlink()  # the "no file, no row" shortcut meets a row: the slow path decides
    assert put(store, data, header, policy) == outcome
    assert found.path.read_bytes() == data
    assert unit(store, study)["instance_count"] == 1


def test_file_head_is_the_file_meta_pydicom_reads() -> None:
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()))
    data, header = part10(ds)
    dataset = data[_dataset_offset(data) :]
    head = file_head(header.sop_class_uid, header.sop_instance_uid, "1.2.840.10008.1.2.1", "CT1")
    meta = dcmread(BytesIO(head + dataset)).file_meta
    assert meta.MediaStorageSOPInstanceUID == header.sop_instance_uid
    assert meta.MediaStorageSOPClassUID == header.sop_class_uid
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # odd length: padded with NUL
    assert meta.SourceApplicationEntityTitle == "CT1"  # odd length: padded with a space
    assert meta.FileMetaInformationGroupLength == len(head) - 132 - 12
