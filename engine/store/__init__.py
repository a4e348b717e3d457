"""Message store: SQLAlchemy 2 Core on SQLite (WAL) or PostgreSQL."""
