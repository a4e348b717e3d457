"""The Modality Worklist store: order actions in, C-FIND matches out.

Writes (:meth:`WorklistStore.apply`) run inside the caller's transaction, the
one that also marks the queue entry sent, so an order is applied exactly once.
Reads (:meth:`WorklistStore.find`) open their own short connections: the MWL
SCP calls them from pynetdicom's association threads.

The table lives in :mod:`engine.worklist_table`; item building and merging in
:mod:`engine.worklist_dataset`; matching in :mod:`engine.worklist_match`;
return keys and character sets in :mod:`engine.worklist_response`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine, RowMapping, bindparam, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import PermanentError, StoreError, TransformError
from engine.store.db import read_rows
from engine.worklist_dataset import (
    ENDED_STATUSES,
    dataset_from_attributes,
    index_columns,
    merge_item,
    sps_status,
    with_sps_status,
)
from engine.worklist_item import WorklistItem
from engine.worklist_match import where_clauses
from engine.worklist_response import response_for
from engine.worklist_table import worklist_items

__all__ = ["PreparedItem", "WorklistStore", "worklist_items"]


@dataclass(frozen=True, slots=True)
class PreparedItem:
    """A validated worklist item; ``new_row`` is its row if its key turns out to be new."""

    item: WorklistItem
    new_row: tuple[dict[str, Any], str] | None


_END_STATUS = {"cancel": "CANCELED", "discontinue": "DISCONTINUED"}
_INSERT = worklist_items.insert()
_UPDATE = worklist_items.update().where(worklist_items.c.id == bindparam("row_id"))
_ORDER = (worklist_items.c.sps_start_date, worklist_items.c.sps_start_time, worklist_items.c.id)


class WorklistStore:
    """Modality Worklist items in the ``worklist_items`` table."""

    #: Rows fetched per short read connection while streaming C-FIND matches.
    page_size = 200

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- writes -------------------------------------------------------------

    def apply(self, conn: Connection, item: WorklistItem) -> str:
        """Apply one order action inside the caller's transaction (never commits).

        ``create`` inserts (a resent NW for a known key updates it and revives
        a canceled item); ``update`` merges into the item (inserting it when
        unknown: an XO carries the whole order); ``cancel``/``discontinue``
        take the item off the worklist; ``status`` sets the SPS status.
        Returns a short description of what happened.

        Raises :class:`TransformError` for an invalid item and
        :class:`PermanentError` when cancel/discontinue/status names an
        unknown order.
        """
        return self.apply_prepared(conn, self.prepare(item))

    def prepare(self, item: WorklistItem) -> PreparedItem:
        """Validate ``item`` and build what can be built outside the transaction.

        The store has one writer; the CPU work of an order (building and
        checking its dataset, encoding its row) is done here, in the caller's
        thread, so the writer's transaction only reads and writes rows. Raises
        :class:`TransformError` for an invalid item.
        """
        incoming = dataset_from_attributes(item.attributes)
        if item.action not in ("create", "update"):
            return PreparedItem(item, None)
        dataset, description = _upserted(item, incoming, None)
        return PreparedItem(item, (_row_values(dataset), description))

    def apply_prepared(self, conn: Connection, prepared: PreparedItem) -> str:
        """Apply a prepared item inside the caller's transaction (never commits)."""
        item = prepared.item
        try:
            row = self._current(conn, item.key)
            if row is None and prepared.new_row is not None:
                values, description = prepared.new_row
                now = datetime.now(UTC)
                conn.execute(
                    _INSERT, {"item_key": item.key, "created_at": now, "updated_at": now, **values}
                )
                return description
            # An order the worklist already holds: merge into it (rebuilt here,
            # so nothing built during prepare is shared with the merge).
            incoming = dataset_from_attributes(item.attributes)
            existing = Dataset.from_json(row["attributes"]) if row is not None else None
            dataset, description = _changed_item(item, incoming, existing)
            self._write(conn, item.key, row, dataset)
        except SQLAlchemyError as exc:
            raise StoreError(f"worklist write failed: {type(exc).__name__}") from exc
        return description

    @staticmethod
    def _current(conn: Connection, key: str) -> RowMapping | None:
        query = (
            select(worklist_items.c.id, worklist_items.c.attributes)
            .where(worklist_items.c.item_key == key)
            .with_for_update()
        )
        return conn.execute(query).mappings().first()

    @staticmethod
    def _write(conn: Connection, key: str, row: RowMapping | None, dataset: Dataset) -> None:
        now = datetime.now(UTC)
        values = {**_row_values(dataset), "updated_at": now}
        # Parameters rather than .values(): the compiled statements stay cached.
        if row is None:
            conn.execute(_INSERT, {"item_key": key, "created_at": now, **values})
        else:
            conn.execute(_UPDATE, {"row_id": row["id"], **values})

    # -- reads --------------------------------------------------------------

    def find(self, identifier: Dataset, *, limit: int | None = None) -> Iterator[Dataset]:
        """The C-FIND responses for a Modality Worklist ``identifier``, in schedule order.

        Matching runs in SQL on the indexed columns, over active items only;
        results are read a page at a time, each page on its own short
        connection, so a slow peer never holds a connection open. Raises
        :class:`~engine.errors.ParseError` at once for a malformed date/time
        key and :class:`StoreError` (while iterating) when the database fails.
        """
        conditions = [
            worklist_items.c.active.is_(True),
            *where_clauses(identifier, worklist_items, self._engine.dialect.name),
        ]
        return self._matches(conditions, identifier, limit)

    def _matches(
        self, conditions: list[Any], identifier: Dataset, limit: int | None
    ) -> Iterator[Dataset]:
        remaining = limit
        after: tuple[str, str, int] | None = None
        while remaining is None or remaining > 0:
            wanted = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._page(conditions, after, wanted)
            for row in rows:
                yield response_for(Dataset.from_json(row["attributes"]), identifier)
            if len(rows) < wanted:
                return
            if remaining is not None:
                remaining -= len(rows)
            last = rows[-1]
            after = (last["sps_start_date"], last["sps_start_time"], last["id"])

    def _page(
        self, conditions: list[Any], after: tuple[str, str, int] | None, size: int
    ) -> list[RowMapping]:
        query = select(*_ORDER, worklist_items.c.attributes).where(*conditions)
        if after is not None:
            query = query.where(tuple_(*_ORDER) > tuple_(*after))
        query = query.order_by(*_ORDER).limit(size)
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(query).mappings().all())
        except SQLAlchemyError as exc:
            raise StoreError(f"worklist query failed: {type(exc).__name__}") from exc

    def get(self, key: str) -> dict[str, Any] | None:
        """One item by its order key as a plain dict (``attributes`` is DICOM JSON)."""
        query = select(worklist_items).where(worklist_items.c.item_key == key)
        rows = self._read(query)
        return rows[0] if rows else None

    def find_item(
        self, *, accession_number: str | None = None, study_instance_uid: str | None = None
    ) -> Dataset | None:
        """The item (active or not) whose AccessionNumber and/or StudyInstanceUID match exactly.

        Every criterion given must match; with none, nothing matches. Images
        may arrive after their order was completed or ended, so ended items
        count too, but an active item wins, then the most recently updated.
        Used to link images to their order (tag morphing).
        """
        conditions = []
        if accession_number:
            conditions.append(worklist_items.c.accession_number == accession_number)
        if study_instance_uid:
            conditions.append(worklist_items.c.study_instance_uid == study_instance_uid)
        if not conditions:
            return None
        query = (
            select(worklist_items.c.attributes)
            .where(*conditions)
            .order_by(
                worklist_items.c.active.desc(),
                worklist_items.c.updated_at.desc(),
                worklist_items.c.id.desc(),
            )
            .limit(1)
        )
        rows = self._read(query)
        return Dataset.from_json(rows[0]["attributes"]) if rows else None

    def list_items(
        self, *, active_only: bool = True, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Items in schedule order as plain dicts, for the admin UI."""
        query = select(worklist_items).order_by(*_ORDER).limit(limit).offset(offset)
        if active_only:
            query = query.where(worklist_items.c.active.is_(True))
        return self._read(query)

    def _read(self, query: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in read_rows(self._engine, query, "worklist")]


def _row_values(dataset: Dataset) -> dict[str, Any]:
    """The table columns of an item's dataset (index columns, active flag, JSON)."""
    columns = index_columns(dataset)
    return {
        **columns,
        "active": columns["status"] not in ENDED_STATUSES,
        "attributes": dataset.to_json_dict(),
    }


def _changed_item(
    item: WorklistItem, incoming: Dataset, existing: Dataset | None
) -> tuple[Dataset, str]:
    """The item's new dataset and a description of the change."""
    if item.action in ("create", "update"):
        return _upserted(item, incoming, existing)
    if existing is None:
        raise PermanentError(f"no worklist item for order {item.key}")
    merged = merge_item(existing, incoming)
    if item.action == "status":
        if not item.status:
            raise TransformError("a 'status' worklist action needs a status")
        return with_sps_status(merged, item.status), f"status {item.status}"
    status = _END_STATUS[item.action]
    return with_sps_status(merged, status), status.lower()


def _upserted(
    item: WorklistItem, incoming: Dataset, existing: Dataset | None
) -> tuple[Dataset, str]:
    merged = merge_item(existing if existing is not None else Dataset(), incoming)
    if not merged.get("StudyInstanceUID"):
        # Modalities need it to file images under the ordered study; made once,
        # at order time, and kept by later updates.
        merged.StudyInstanceUID = generate_uid()
    status = item.status or sps_status(incoming) or _carried_status(item, existing)
    if existing is None:
        described = "created" if item.action == "create" else "created (update for unknown order)"
    else:
        described = "updated (order resent)" if item.action == "create" else "updated"
    return with_sps_status(merged, status), described


def _carried_status(item: WorklistItem, existing: Dataset | None) -> str:
    """Status when the message names none: a new or re-placed order is SCHEDULED."""
    current = sps_status(existing) if existing is not None else None
    if current is None:
        return "SCHEDULED"
    if item.action == "create" and current in ENDED_STATUSES:
        return "SCHEDULED"  # an NW reusing a canceled order's key places it again
    return current
