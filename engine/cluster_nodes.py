"""Which nodes share the store, which one leads, and what each has claimed.

Read straight from PostgreSQL, with no table of our own to keep up to date:
every connection of a node carries ``application_name = meridian:<node id>``
(:func:`engine.store.db.open_engine`), so ``pg_stat_activity`` lists the live
nodes; ``pg_locks`` shows which of them holds the job-leadership advisory lock;
the queue shows each node's claims. A node that died disappears from the list
as soon as PostgreSQL notices its connections are gone; its claims stay listed
until their lease runs out and another node takes them.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from engine.config import HubSettings
from engine.leadership import HUB_JOBS, lock_key

__all__ = ["APPLICATION_PREFIX", "cluster_view", "node_id"]

APPLICATION_PREFIX = "meridian:"

_NODES = text(
    """
    SELECT substr(a.application_name, :skip) AS node,
           count(*) AS connections,
           min(a.backend_start) AS connected_since,
           bool_or(l.pid IS NOT NULL) AS leader,
           min(host(a.client_addr)) AS address
    FROM pg_stat_activity a
    -- A bigint advisory key is split into classid (high half) and objid (low half);
    -- shifting back wraps like the signed key itself.
    LEFT JOIN pg_locks l
      ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
     AND ((l.classid::bigint << 32) | l.objid::bigint) = :key
    WHERE a.datname = current_database() AND a.application_name LIKE :prefix
    GROUP BY a.application_name
    ORDER BY node
    """
)

_CLAIMS = text(
    """
    SELECT claimed_by AS node, count(*) AS entries, min(lease_until) AS lease_until
    FROM queue_entries
    WHERE status = 'QUEUED' AND claimed_by IS NOT NULL
    GROUP BY claimed_by
    ORDER BY claimed_by
    """
)


def node_id(settings: HubSettings) -> str:
    """This hub's node id: the configured one, or host name, process id and a random tag.

    The tag keeps two hubs of one process (tests, tools) apart; a configured id is
    stable, so a restarted node recognises its own claims.
    """
    if settings.cluster.node_id:
        return settings.cluster.node_id
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def cluster_view(engine: Engine, this_node: str | None) -> dict[str, Any]:
    """The nodes on the store (PostgreSQL), the leader and each node's claims."""
    if engine.dialect.name != "postgresql":
        return {"store": engine.dialect.name, "this_node": None, "nodes": [], "claims": []}
    params = {
        "skip": len(APPLICATION_PREFIX) + 1,
        "prefix": f"{APPLICATION_PREFIX}%",
        "key": lock_key(HUB_JOBS),
    }
    with engine.connect() as conn:
        node_rows = [dict(row) for row in conn.execute(_NODES, params).mappings()]
        claims = [dict(row) for row in conn.execute(_CLAIMS).mappings()]
    now = datetime.now(UTC)
    for claim in claims:
        lease = claim.pop("lease_until")
        claim["expired"] = lease is not None and lease < now
    return {"store": "postgresql", "this_node": this_node, "nodes": node_rows, "claims": claims}
