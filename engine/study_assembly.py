"""The quiet-period study assembler: a study is complete when no instance arrived for a while.

Modalities send a study as a stream of C-STOREs with no "end of study"
marker, so, like MONAI Deploy and Orthanc's "stable study", a unit (study or
series) counts as complete once it has been quiet for the channel's quiet
period. One :class:`StudyAssembler` task per channel polls the archive index:
it closes quiet units, then hands every completed, not yet dispatched batch
to ``dispatch`` (oldest first) and marks it dispatched only after
``dispatch`` returned. A crash in between dispatches the batch again on
restart; the engine de-duplicates on content.

Several nodes on one PostgreSQL store each receive images into the shared
archive (its folder must be shared storage); only the node that leads
(:mod:`engine.leadership`) closes units and dispatches them, so a study is
dispatched once however its images were spread over the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread

from engine.archive import Archive, PendingUnit
from engine.leadership import JobLeadership
from engine.study_batch import METADATA_KEYWORDS, StudyBatch, metadata_text

__all__ = ["METADATA_KEYWORDS", "Dispatch", "StudyAssembler", "read_metadata"]

log = logging.getLogger(__name__)

Dispatch = Callable[[StudyBatch], Awaitable[None]]


_MAX_BACKOFF_SECONDS = 30.0


def read_metadata(path: Path) -> dict[str, Any]:
    """The :data:`METADATA_KEYWORDS` of one file's header (pixel data is not read)."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=list(METADATA_KEYWORDS))
    return {keyword: metadata_text(ds.get(keyword)) for keyword in METADATA_KEYWORDS}


class StudyAssembler:
    """Closes quiet units of one channel and dispatches their batches, one at a time."""

    def __init__(
        self,
        archive: Archive,
        channel: str,
        quiet_period_seconds: float,
        dispatch: Dispatch,
        *,
        poll_interval: float = 0.25,
        retry_backoff: float = 1.0,
    ) -> None:
        if quiet_period_seconds <= 0:
            raise ValueError("the quiet period must be positive")
        self._archive = archive
        self._channel = channel
        self._quiet = quiet_period_seconds
        self._dispatch = dispatch
        self._poll = poll_interval
        self._retry_backoff = retry_backoff
        self._backoff = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dispatched = 0
        #: Set before start() when nodes share the store: polls run only while this node leads.
        self.leadership: JobLeadership | None = None

    async def start(self) -> None:
        """Start polling; batches left undispatched by a previous run go first."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=f"assembler-{self._channel}")

    async def stop(self) -> None:
        """Stop after the batch being dispatched (if any) has been handed over and recorded."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.leadership is None or await self.leadership.is_leader():
                    await self.run_once()
                self._backoff = 0.0
            except Exception as exc:
                # Keep the type and our message only: a dispatch error may quote content.
                self._backoff = min(
                    max(self._backoff * 2, self._retry_backoff), _MAX_BACKOFF_SECONDS
                )
                log.error(
                    "assembler %s: %s (%s); retrying in %.1f s",
                    self._channel, type(exc).__name__, exc, self._backoff,
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll + self._backoff)

    async def run_once(self) -> int:
        """One poll: close quiet units, dispatch pending batches; returns how many dispatched."""
        archive, channel = self._archive, self._channel
        if await asyncio.to_thread(archive.has_quiet, channel, self._quiet):
            closed = await archive.complete_quiet(channel, self._quiet)
            log.debug("assembler %s: %d unit(s) complete", channel, closed)
        dispatched = 0
        for unit in await asyncio.to_thread(archive.pending, channel):
            for number in unit.batches():
                if self._stopping.is_set():
                    return dispatched
                batch = await asyncio.to_thread(self._build, unit, number)
                if batch is not None:
                    await self._dispatch(batch)
                    dispatched += 1
                    self.dispatched += 1
                    log.info(
                        "assembler %s: batch %d of a unit dispatched (%d instance(s))",
                        channel, number, len(batch.instances),
                    )  # fmt: skip
                await archive.mark_dispatched(channel, unit.assembly_key, number)
        return dispatched

    def _build(self, unit: PendingUnit, number: int) -> StudyBatch | None:
        """The batch's StudyBatch, or None if it has no instance left (all moved on)."""
        records = self._archive.batch_records(self._channel, unit.assembly_key, number)
        if not records:
            return None
        first = records[0]
        try:
            metadata = read_metadata(first.path)
        except Exception as exc:
            # The batch still goes on: routing on missing metadata is the rules' call.
            log.warning("assembler %s: cannot read a header: %s", self._channel, type(exc).__name__)
            metadata = dict.fromkeys(METADATA_KEYWORDS, "")
        return StudyBatch(
            study_instance_uid=unit.study_instance_uid,
            batch=number,
            calling_aet=first.calling_aet,
            called_aet=first.called_aet,
            instances=[record.ref() for record in records],
            metadata=metadata,
        )
