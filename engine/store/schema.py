"""The single SQLAlchemy ``MetaData`` every table of the store registers on.

Each module that owns tables defines them on :data:`metadata`; ``create_all``
on this object builds the whole schema.
"""

from sqlalchemy import MetaData

__all__ = ["metadata"]

metadata = MetaData()
