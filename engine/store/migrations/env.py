"""Alembic environment of the Meridian store.

Run only through :mod:`engine.store.migrate`, which passes an open connection in
``config.attributes["connection"]`` (no ``alembic.ini``, no URL here): the
caller holds the cross-node lock on that same connection.
"""

from __future__ import annotations

from alembic import context

from engine.store.migrate import full_metadata


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run Meridian migrations with `meridian db upgrade`, not `alembic`")
    context.configure(
        connection=connection,
        target_metadata=full_metadata(),
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_run()
