"""The image archive: received instances as Part 10 files, indexed in the message store.

Files live under ``<root>/<channel>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(``root`` is ``<data_dir>/archive``): UIDs and the channel name only, never a
patient name or ID. Each channel keeps its own copy, so one channel's
``overwrite`` can never change a file another channel's batch points at.

:meth:`Archive.store` is what a C-STORE success promises: it returns only
after the file is durably on disk (temporary file, fsync, rename, fsync of the
directory) *and* its index row is committed through the
:class:`~engine.store.group_commit.GroupCommitter` (many associations share
one commit). The file comes first: a crash between the two leaves an
unindexed file that the sender's retry simply replaces, never an index row
without its file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, RowMapping, select, update
from sqlalchemy.exc import SQLAlchemyError

from engine.archive_tables import (
    COMPLETE,
    RECEIVING,
    Stored,
    archive_instances,
    archive_studies,
    index_instance,
)
from engine.dicom_instance import InstanceHeader
from engine.errors import ConfigError, StoreError
from engine.store.group_commit import GroupCommitter
from engine.study_batch import InstanceRef

__all__ = ["Archive", "ArchivedInstance", "ChannelPolicy", "PendingUnit", "Stored"]

log = logging.getLogger(__name__)

GroupBy = Literal["study", "series"]
Duplicates = Literal["ignore", "overwrite"]
Clock = Callable[[], datetime]

_I = archive_instances
_S = archive_studies


def utc_now() -> datetime:
    """The archive's clock: timezone-aware UTC."""
    return datetime.now(UTC)


def _check_channel(name: str) -> str:
    # The channel name is a path component: the loader's name pattern, checked again here.
    allowed = all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    if not name or len(name) > 64 or not allowed:
        raise ConfigError(f"channel name {name!r} cannot name an archive folder")
    return name


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """How one channel archives: its name, assembly unit and duplicate policy."""

    channel: str
    group_by: GroupBy = "study"
    duplicates: Duplicates = "ignore"

    def __post_init__(self) -> None:
        _check_channel(self.channel)

    def assembly_key(self, header: InstanceHeader) -> str:
        """The UID the quiet period groups this instance under."""
        return (
            header.series_instance_uid if self.group_by == "series" else header.study_instance_uid
        )


@dataclass(frozen=True, slots=True)
class ArchivedInstance:
    """One index row, with the file's absolute path."""

    channel: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    assembly_key: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_aet: str
    called_aet: str
    batch: int

    def ref(self) -> InstanceRef:
        """The instance as a :class:`StudyBatch` names it."""
        return InstanceRef(
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            series_instance_uid=self.series_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            path=str(self.path),
        )


@dataclass(frozen=True, slots=True)
class PendingUnit:
    """An assembly unit with completed batches the channel has not taken yet."""

    channel: str
    assembly_key: str
    study_instance_uid: str
    dispatched_batch: int
    completed_batch: int

    def batches(self) -> range:
        """The batch numbers to hand on, oldest first."""
        return range(self.dispatched_batch + 1, self.completed_batch + 1)


class Archive:
    """Writes received instances durably and keeps their index (thread safe)."""

    def __init__(
        self,
        root: Path,
        engine: Engine,
        committer: GroupCommitter,
        *,
        fsync: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        self._root = root.resolve()
        self._engine = engine
        self._committer = committer
        self._fsync = fsync
        self._clock = clock

    @property
    def root(self) -> Path:
        """The archive's root folder (absolute)."""
        return self._root

    # -- writing ----------------------------------------------------------------

    def store(
        self,
        data: bytes | Sequence[bytes | memoryview],
        header: InstanceHeader,
        *,
        calling_aet: str,
        called_aet: str,
        policy: ChannelPolicy,
    ) -> Stored:
        """Archive one Part 10 file; returns once it is on disk and indexed.

        ``data`` is the file's bytes, or its parts in order (no copy to join
        them). Called from pynetdicom's association threads. Raises
        :class:`StoreError` when the disk or the index fails (the caller
        answers "out of resources").
        """
        parts: list[bytes | memoryview] = [data] if isinstance(data, bytes) else list(data)
        relative = self._relative_path(policy.channel, header)
        path = self._root / relative
        # An indexed instance always has its file (file first, then row), so
        # no file means no row: the common case needs no lookup. A file
        # without a row is a crash's orphan, rewritten below.
        fresh = not path.exists()
        if (
            not fresh
            and policy.duplicates == "ignore"
            and self._indexed(policy.channel, header.sop_instance_uid)
        ):
            return Stored.DUPLICATE
        self._write_durably(path, parts)
        row = {
            "channel": policy.channel,
            "sop_instance_uid": header.sop_instance_uid,
            "study_instance_uid": header.study_instance_uid,
            "series_instance_uid": header.series_instance_uid,
            "assembly_key": policy.assembly_key(header),
            "sop_class_uid": header.sop_class_uid,
            "transfer_syntax_uid": header.transfer_syntax_uid,
            "path": relative.as_posix(),
            "size": sum(len(part) for part in parts),
            "calling_aet": calling_aet,
            "called_aet": called_aet,
            "patient_id": _clip(header.patient_id, 64),
            "accession_number": _clip(header.accession_number, 64),
            "modality": _clip(header.modality, 16),
        }
        outcome, stale = self._committer.run(self._index_op(row, policy.duplicates, fresh=fresh))
        if stale is not None:
            self._remove(stale)
        return outcome

    @staticmethod
    def _relative_path(channel: str, header: InstanceHeader) -> Path:
        return Path(
            channel,
            header.study_instance_uid,
            header.series_instance_uid,
            f"{header.sop_instance_uid}.dcm",
        )

    def _indexed(self, channel: str, sop_instance_uid: str) -> bool:
        query = select(_I.c.id).where(
            _I.c.channel == channel, _I.c.sop_instance_uid == sop_instance_uid
        )
        try:
            with self._engine.connect() as conn:
                return conn.execute(query).first() is not None
        except SQLAlchemyError as exc:
            raise StoreError(f"archive index unavailable: {type(exc).__name__}") from exc

    def _write_durably(self, path: Path, parts: list[bytes | memoryview]) -> None:
        directory = path.parent
        temporary = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            self._make_dirs(directory)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                for part in parts:
                    _write_all(fd, part)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            if self._fsync:
                _fsync_dir(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            # strerror only: the path is UIDs, but say nothing more than needed.
            raise StoreError(f"archive write failed: {exc.strerror or type(exc).__name__}") from exc

    def _make_dirs(self, directory: Path) -> None:
        """Create missing folders, fsyncing each parent so the new entry survives a crash."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            # Another association may have made it without fsyncing its parent yet.
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o750)
            if self._fsync:
                _fsync_dir(folder.parent)

    def _index_op(
        self, row: dict[str, Any], duplicates: Duplicates, *, fresh: bool
    ) -> Callable[[Connection], tuple[Stored, str | None]]:
        """The write the committer runs (its clock read in the writer, at commit order)."""

        def op(conn: Connection) -> tuple[Stored, str | None]:
            return index_instance(conn, row, self._clock(), duplicates, fresh=fresh)

        return op

    def _remove(self, relative: str) -> None:
        try:
            (self._root / relative).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("archive: could not remove a replaced file: %s", exc.strerror)

    # -- the assembler's side ------------------------------------------------------

    def has_quiet(self, channel: str, quiet_seconds: float) -> bool:
        """True if a unit of ``channel`` has been receiving and quiet for ``quiet_seconds``."""
        cutoff = self._clock() - timedelta(seconds=quiet_seconds)
        query = (
            select(_S.c.id)
            .where(
                _S.c.channel == channel,
                _S.c.status == RECEIVING,
                _S.c.last_received_at <= cutoff,
            )
            .limit(1)
        )
        with self._engine.connect() as conn:
            return conn.execute(query).first() is not None

    async def complete_quiet(self, channel: str, quiet_seconds: float) -> int:
        """Close every unit quiet for ``quiet_seconds``: its batch becomes pending dispatch."""

        def op(conn: Connection) -> int:
            now = self._clock()
            cutoff = now - timedelta(seconds=quiet_seconds)
            result = conn.execute(
                update(_S)
                .where(
                    _S.c.channel == channel,
                    _S.c.status == RECEIVING,
                    _S.c.last_received_at <= cutoff,
                )
                .values(
                    status=COMPLETE,
                    completed_batch=_S.c.batch,
                    completed_at=now,
                    dispatch_pending=True,
                )
            )
            return int(result.rowcount)

        return await self._committer.run_async(op)

    def pending(self, channel: str) -> list[PendingUnit]:
        """Units of ``channel`` with completed batches not yet dispatched, oldest first."""
        query = (
            select(
                _S.c.assembly_key,
                _S.c.study_instance_uid,
                _S.c.dispatched_batch,
                _S.c.completed_batch,
            )
            .where(_S.c.channel == channel, _S.c.dispatch_pending.is_(True))
            .order_by(_S.c.completed_at, _S.c.id)
        )
        with self._engine.connect() as conn:
            return [PendingUnit(channel, *row) for row in conn.execute(query)]

    async def mark_dispatched(self, channel: str, assembly_key: str, batch: int) -> None:
        """Record that the channel took ``batch`` of a unit (idempotent)."""

        def op(conn: Connection) -> None:
            conn.execute(
                update(_S)
                .where(
                    _S.c.channel == channel,
                    _S.c.assembly_key == assembly_key,
                    _S.c.dispatched_batch < batch,
                )
                .values(dispatched_batch=batch, dispatch_pending=_S.c.completed_batch > batch)
            )

        await self._committer.run_async(op)

    # -- reading ------------------------------------------------------------------------

    def get_instance(self, channel: str, sop_instance_uid: str) -> ArchivedInstance | None:
        """The archived instance of ``channel`` with this SOP Instance UID, if any."""
        query = select(*_COLUMNS).where(
            _I.c.channel == channel, _I.c.sop_instance_uid == sop_instance_uid
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return self._instance(row._mapping) if row is not None else None

    def batch_records(self, channel: str, assembly_key: str, batch: int) -> list[ArchivedInstance]:
        """The instances of one batch of a unit, in arrival order."""
        query = (
            select(*_COLUMNS)
            .where(
                _I.c.channel == channel,
                _I.c.assembly_key == assembly_key,
                _I.c.batch == batch,
            )
            .order_by(_I.c.id)
        )
        with self._engine.connect() as conn:
            return [self._instance(row._mapping) for row in conn.execute(query)]

    def batch_instances(self, channel: str, assembly_key: str, batch: int) -> list[InstanceRef]:
        """The instances of one batch as :class:`InstanceRef` (absolute paths)."""
        return [record.ref() for record in self.batch_records(channel, assembly_key, batch)]

    def _instance(self, row: RowMapping) -> ArchivedInstance:
        values = dict(row)
        values["path"] = self._root / values["path"]
        return ArchivedInstance(**values)


_COLUMNS = (
    _I.c.channel,
    _I.c.sop_instance_uid,
    _I.c.sop_class_uid,
    _I.c.study_instance_uid,
    _I.c.series_instance_uid,
    _I.c.assembly_key,
    _I.c.transfer_syntax_uid,
    _I.c.path,
    _I.c.size,
    _I.c.calling_aet,
    _I.c.called_aet,
    _I.c.batch,
)


def _clip(value: str | None, size: int) -> str | None:
    return value[:size] if value is not None else None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
