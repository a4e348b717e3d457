"""The single SQLAlchemy ``MetaData`` every table of the store registers on.

Each module that owns tables defines them on :data:`metadata`; ``create_all``
on this object builds the whole schema.
"""

from sqlalchemy import BigInteger, Integer, MetaData

__all__ = ["Id", "metadata"]

metadata = MetaData()

#: Primary and foreign keys: SQLite only auto-increments INTEGER PRIMARY KEY;
#: PostgreSQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")
