"""The worklist destination: applies order actions to the Modality Worklist store.

It writes into the hub's own store, inside the transaction that marks the
queue entry sent (:class:`~connectors.base.TransactionalDestination`), so an
order reaches the worklist exactly once. The MWL SCP
(:mod:`connectors.dicom_mwl`) then serves the items to modalities.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Connection

from connectors.base import Delivery
from engine.errors import TransformError
from engine.validation import describe_validation_error
from engine.worklist import PreparedItem, WorklistStore
from engine.worklist_item import WorklistItem

__all__ = ["WorklistDestination", "WorklistDestinationConfig"]


class WorklistDestinationConfig(BaseModel):
    """``type: worklist`` — no options: the worklist is the hub's own store."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["worklist"]


class WorklistDestination:
    """Applies one :class:`WorklistItem` (as JSON) per queued payload."""

    def __init__(self, config: WorklistDestinationConfig, store: WorklistStore) -> None:
        self.config = config
        self._store = store

    def prepare(self, payload: str) -> PreparedItem:
        """Parse and validate the payload outside the store's transaction.

        Raises :class:`TransformError` when the payload is not a valid
        WorklistItem or names invalid DICOM attributes.
        """
        return self._store.prepare(_parse(payload))

    def apply(self, conn: Connection, prepared: PreparedItem) -> Delivery:
        """Apply a prepared worklist action inside ``conn``'s transaction.

        Raises :class:`~engine.errors.PermanentError` when it cancels or
        updates the status of an order the worklist does not know.
        """
        return Delivery(response=self._store.apply_prepared(conn, prepared))

    async def close(self) -> None:
        """Nothing to release: the store belongs to the hub."""


def _parse(payload: str) -> WorklistItem:
    try:
        return WorklistItem.model_validate_json(payload)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise TransformError(f"not a worklist item: {problems}") from exc
