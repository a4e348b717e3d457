"""The admin API over a real SQLite store, for TestClient tests.

The store, group committer, worklist and reading worklist are the real ones;
only the hub is stood in for (its runtimes' workers record being woken), since
the API touches nothing else of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from admin.api import create_app
from admin.settings import AdminSettings
from admin.users import Role, add_user
from engine.reading_config import ReadingWorklistConfig
from engine.reading_worklist import ReadingWorklist
from engine.services import Services
from engine.states import MessageStatus
from engine.store.db import open_engine
from engine.store.group_commit import GroupCommitter
from engine.store.messages import (
    InboundRecord,
    QueueItem,
    insert_inbound,
    mark_error,
    pending_entries,
)
from engine.worklist import WorklistStore

PASSWORD = "correct horse battery"
RAW = "MSH|^~\\&|EHR|HOSP|MERIDIAN|RAD|202601010830||ORM^O01|C1|P|2.5\rPID|1||MRN123||DOE^JANE"
#: The users every client starts with: an admin, an analyst and a viewer (no PHI access).
USERS: tuple[tuple[str, Role], ...] = (("ada", "admin"), ("ann", "analyst"), ("vic", "viewer"))


@dataclass(frozen=True)
class FakeServices:
    """Just what the admin API uses of :class:`Services`, from real store objects."""

    engine: Engine
    committer: GroupCommitter
    worklist: WorklistStore
    reading_worklist: ReadingWorklist
    claimer: Any = None  # SQLite: one node, no queue claims


class Worker:
    """A destination worker that records being woken."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.woken = 0

    def notify(self) -> None:
        self.woken += 1


@dataclass
class Runtime:
    workers: list[Worker]


@dataclass
class Hub:
    """The part of the hub the API touches: runtimes with workers to wake, sources, listener."""

    runtimes: dict[str, Any]
    channels: list[Any] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    mwl: Any = None
    node_id: str = "test-node"


@contextmanager
def open_store(tmp_path: Path) -> Iterator[FakeServices]:
    """A fresh SQLite store with its single writer running."""
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    committer = GroupCommitter(engine)
    committer.start()
    try:
        yield FakeServices(
            engine,
            committer,
            WorklistStore(engine),
            ReadingWorklist(engine, ReadingWorklistConfig()),
        )
    finally:
        committer.stop()
        engine.dispose()


def make_client(
    store: FakeServices, hub: Hub | None = None, settings: AdminSettings | None = None
) -> TestClient:
    """The app over ``store`` with the :data:`USERS` created (password :data:`PASSWORD`)."""
    app = create_app(cast(Services, store), cast(Any, hub), settings or AdminSettings())
    for name, role in USERS:
        add_user(store.engine, name, PASSWORD, role)
    return TestClient(app)


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Log in; returns the CSRF token (the cookie stays in the client)."""
    response = client.post("/api/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def store_message(
    store: FakeServices,
    raw: str = RAW,
    *,
    channel: str = "orders",
    destinations: tuple[str, ...] = ("ris",),
    transformed: str | None = None,
    accession: str = "ACC1",
) -> int:
    """A message stored the way the pipeline stores one, queued for ``destinations``."""
    record = InboundRecord(
        channel=channel,
        origin="mllp:test",
        raw=raw,
        status=MessageStatus.QUEUED,
        transformed=transformed if transformed is not None else "TRANSFORMED " + raw,
        patient_id="MRN123",
        accession=accession,
        queue=[QueueItem(name, "PAYLOAD " + raw) for name in destinations],
    )
    result = store.committer.run(insert_inbound(record, duplicate_control=False))
    return int(result.message_id)


def fail_deliveries(store: FakeServices, channel: str, destination: str) -> int:
    """Mark every pending entry of ``destination`` ERROR (as a worker giving up does)."""
    entries = pending_entries(store.engine, channel, destination, 1000)
    for entry in entries:
        store.committer.run(lambda conn, e=entry: mark_error(conn, e, "connection refused"))
    return len(entries)


def failed_message(store: FakeServices, raw: str = RAW, accession: str = "ACC1") -> int:
    """A message whose one queue entry (destination ``ris``) ended in ERROR."""
    message_id = store_message(store, raw, accession=accession)
    fail_deliveries(store, "orders", "ris")
    return message_id
