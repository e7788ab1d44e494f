"""Test-only WSGI entry point for glance-api: Glance's own application, with
every SQLite transaction begun as BEGIN IMMEDIATE.

Glance's import tasks write to the database from their own threads while the
API's threads write too. pysqlite begins transactions lazily (DEFERRED), so a
transaction that has read and then wants to write, while another connection
holds the write lock, gets "database is locked" at once: SQLite refuses to
wait there (it would deadlock), whatever the busy timeout. Seen as an HTTP 500
on POST /v2/images on a loaded machine. Taking the write lock when the
transaction begins makes every writer wait its turn (up to the connection's
timeout=30) instead. This is the recipe SQLAlchemy documents for pysqlite
("Serializable isolation / Savepoints / Transactional DDL").
"""

from sqlalchemy import event
from sqlalchemy.engine import Engine


@event.listens_for(Engine, "connect")
def _no_pysqlite_transactions(dbapi_connection, _record):
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        # Let SQLAlchemy, not pysqlite, say when a transaction begins.
        dbapi_connection.isolation_level = None


@event.listens_for(Engine, "begin")
def _begin_immediate(conn):
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


from glance.wsgi.api import application  # noqa: E402,F401
