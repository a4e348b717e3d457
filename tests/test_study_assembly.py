"""The quiet-period assembler over a real archive index (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine

import engine.archive_tables  # noqa: F401 - registers the archive tables
from engine.archive import Archive, ChannelPolicy
from engine.dicom_instance import read_instance
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.study_assembly import StudyAssembler
from engine.study_batch import StudyBatch
from tests.support.databases import store_url
from tests.support.dicom_files import make_ct_instance

pytestmark = pytest.mark.timeout(60)

CHANNEL = "ct-ingest"
QUIET = 10.0
DEFAULT_POLICY = ChannelPolicy(CHANNEL)


class Clock:
    """The archive's clock; real time unless frozen and moved by the test."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class Collector:
    """A dispatch target recording batches; can be told to fail."""

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.batches: list[StudyBatch] = []
        self.fail = fail
        self.delay = delay
        self.calls = 0

    async def __call__(self, batch: StudyBatch) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("engine unavailable")
        self.batches.append(batch)


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    for url in store_url(request.param, tmp_path):
        engine = open_engine(url)
        committer = GroupCommitter(engine)
        committer.start()
        yield Archive(tmp_path / "archive", engine, committer, clock=Clock())
        committer.stop()
        engine.dispose()


def clock(archive: Archive) -> Clock:
    found: Clock = archive._clock  # type: ignore[assignment]
    return found


def store(
    archive: Archive,
    study: str,
    series: str,
    number: int,
    policy: ChannelPolicy = DEFAULT_POLICY,
    **kw: object,
) -> str:
    ds = make_ct_instance(
        study,
        series,
        number=number,
        rows=8,
        columns=8,
        **kw,  # type: ignore[arg-type]
    )
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    header = read_instance(_dataset_bytes(data), str(ds.file_meta.TransferSyntaxUID))
    archive.store(data, header, calling_aet="CT1", called_aet="CT_IN", policy=policy)
    return header.sop_instance_uid


def _dataset_bytes(data: bytes) -> bytes:
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def uids(n: int) -> list[str]:
    return [str(generate_uid()) for _ in range(n)]


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


# -- one poll at a time (clock moved by hand) --------------------------------------------


def test_three_series_become_one_batch_after_the_quiet_period(archive: Archive) -> None:
    study, *series = uids(4)
    sent = [store(archive, study, s, n) for s in series for n in (1, 2)]
    target = Collector()
    assembler = StudyAssembler(archive, CHANNEL, QUIET, target)

    async def body() -> None:
        assert await assembler.run_once() == 0  # still receiving
        clock(archive).advance(QUIET + 1)
        assert await assembler.run_once() == 1
        assert await assembler.run_once() == 0  # dispatched once only

    run(body)
    [batch] = target.batches
    assert (batch.study_instance_uid, batch.batch) == (study, 1)
    assert (batch.calling_aet, batch.called_aet) == ("CT1", "CT_IN")
    assert [i.sop_instance_uid for i in batch.instances] == sent
    assert all(Path(i.path).is_absolute() and Path(i.path).exists() for i in batch.instances)
    assert batch.metadata["Modality"] == "CT"
    assert batch.metadata["BodyPartExamined"] == "CHEST"
    assert batch.metadata["PatientID"] == "SYN0001"
    assert batch.metadata["ReferringPhysicianName"] == "Referrer^Rita"
    assert batch.metadata["StudyDate"] == "20240105"


def test_late_instance_is_a_follow_up_batch_with_only_itself(archive: Archive) -> None:
    study, series = uids(2)
    target = Collector()
    assembler = StudyAssembler(archive, CHANNEL, QUIET, target)

    async def body() -> None:
        for n in (1, 2, 3):
            store(archive, study, series, n)
        clock(archive).advance(QUIET + 1)
        await assembler.run_once()
        late = store(archive, study, series, 4)
        assert await assembler.run_once() == 0
        clock(archive).advance(QUIET + 1)
        assert await assembler.run_once() == 1
        assert [i.sop_instance_uid for i in target.batches[1].instances] == [late]

    run(body)
    assert [b.batch for b in target.batches] == [1, 2]
    assert len(target.batches[0].instances) == 3


def test_group_by_series_hands_on_each_series(archive: Archive) -> None:
    policy = ChannelPolicy(CHANNEL, group_by="series")
    study, *series = uids(3)
    for s in series:
        store(archive, study, s, 1, policy)
    target = Collector()

    async def body() -> None:
        clock(archive).advance(QUIET + 1)
        assert await StudyAssembler(archive, CHANNEL, QUIET, target).run_once() == 2

    run(body)
    assert {b.study_instance_uid for b in target.batches} == {study}
    assert sorted(b.instances[0].series_instance_uid for b in target.batches) == sorted(series)


def test_a_batch_not_marked_dispatched_goes_again_after_a_restart(archive: Archive) -> None:
    study, series = uids(2)
    store(archive, study, series, 1)
    crashed = Collector(fail=1)  # takes the batch, then "dies" before it is marked
    clock(archive).advance(QUIET + 1)

    async def first_run() -> None:
        with pytest.raises(RuntimeError):
            await StudyAssembler(archive, CHANNEL, QUIET, crashed).run_once()

    run(first_run)
    assert crashed.calls == 1
    restarted = Collector()

    async def second_run() -> None:
        assert await StudyAssembler(archive, CHANNEL, QUIET, restarted).run_once() == 1

    run(second_run)
    assert [b.batch for b in restarted.batches] == [1]


def test_a_batch_emptied_by_an_overwrite_is_skipped(archive: Archive) -> None:
    policy = ChannelPolicy(CHANNEL, duplicates="overwrite")
    study, series = uids(2)
    sop = store(archive, study, series, 1, policy)
    clock(archive).advance(QUIET + 1)
    target = Collector()

    async def body() -> None:
        assembler = StudyAssembler(archive, CHANNEL, QUIET, target)
        await archive.complete_quiet(CHANNEL, QUIET)  # batch 1 closed, not dispatched
        store(archive, study, series, 1, policy, sop_uid=sop)  # moves into batch 2
        clock(archive).advance(QUIET + 1)
        assert await assembler.run_once() == 1
        assert await assembler.run_once() == 0

    run(body)
    assert [(b.batch, b.instances[0].sop_instance_uid) for b in target.batches] == [(2, sop)]
    assert archive.pending(CHANNEL) == []


# -- the running task (real time) ------------------------------------------------------


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_running_assembler_dispatches_and_stop_waits_for_the_dispatch(archive: Archive) -> None:
    study, series = uids(2)
    target = Collector(delay=0.3)

    async def body() -> None:
        assembler = StudyAssembler(archive, CHANNEL, 0.3, target, poll_interval=0.05)
        await assembler.start()
        started = time.monotonic()
        store(archive, study, series, 1)
        await until(lambda: target.calls == 1)
        assert time.monotonic() - started >= 0.3  # not before the quiet period
        await assembler.stop()  # mid-dispatch: waits for it and records it
        assert len(target.batches) == 1
        assert archive.pending(CHANNEL) == []

    run(body)


def test_failed_dispatch_is_retried_with_backoff(archive: Archive) -> None:
    study, series = uids(2)
    target = Collector(fail=2)

    async def body() -> None:
        assembler = StudyAssembler(
            archive, CHANNEL, 0.2, target, poll_interval=0.05, retry_backoff=0.05
        )
        store(archive, study, series, 1)
        await assembler.start()
        await until(lambda: len(target.batches) == 1)
        await assembler.stop()

    run(body)
    assert target.calls == 3
    assert [b.batch for b in target.batches] == [1]


def test_quiet_period_must_be_positive(archive: Archive) -> None:
    with pytest.raises(ValueError, match="positive"):
        StudyAssembler(archive, CHANNEL, 0, Collector())


# -- several nodes on one store ---------------------------------------------------------


async def assemble_on(
    nodes: list[Archive], stores: list[Engine], collectors: list[Collector]
) -> None:
    """Run one assembler per node, each with its node's leadership, until a dispatch."""
    from engine.leadership import JobLeadership

    assemblers = [
        StudyAssembler(node, CHANNEL, 0.3, collector, poll_interval=0.05)
        for node, collector in zip(nodes, collectors, strict=True)
    ]
    leaderships = [JobLeadership(pool) for pool in stores]
    for assembler, leadership in zip(assemblers, leaderships, strict=True):
        assembler.leadership = leadership
        await assembler.start()
    deadline = time.monotonic() + 20
    while sum(len(c.batches) for c in collectors) == 0:
        assert time.monotonic() < deadline, "the study was never dispatched"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # time for a second, wrong dispatch to show up
    for assembler in assemblers:
        await assembler.stop()
    for leadership in leaderships:
        await leadership.release()


def test_two_nodes_on_one_store_dispatch_a_study_split_between_them_once(
    tmp_path: Path,
) -> None:
    """Images of one study arrive at two nodes (shared archive folder, one PostgreSQL
    store); both run an assembler, and the study is dispatched once, by the leader."""
    for url in store_url("postgresql", tmp_path):
        stores = [open_engine(url), open_engine(url)]
        committers = [GroupCommitter(pool) for pool in stores]
        for committer in committers:
            committer.start()
        nodes = [
            Archive(tmp_path / "shared-archive", pool, committer)
            for pool, committer in zip(stores, committers, strict=True)
        ]
        study, series = uids(2)
        for number in range(1, 7):
            store(nodes[number % 2], study, series, number)
        collectors = [Collector(), Collector()]
        asyncio.run(assemble_on(nodes, stores, collectors))
        batches = [batch for collector in collectors for batch in collector.batches]
        assert len(batches) == 1
        assert len(batches[0].instances) == 6, "the images of both nodes, in one batch"
        for committer in committers:
            committer.stop()
        for pool in stores:
            pool.dispose()
