"""Alembic environment: runs migrations on the connection handed over by the catalog."""

from alembic import context
from sqlalchemy.engine import Connection

from tasks.catalog.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "catalog migrations run through tasks.catalog.open_catalog(); "
        "pass a SQLAlchemy Connection as config.attributes['connection']"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
