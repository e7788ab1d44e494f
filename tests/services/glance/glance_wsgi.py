"""Test-only WSGI entry point for glance-api: Glance's own application, with
every SQLite transaction begun as BEGIN IMMEDIATE.

Glance's import tasks write to the database from their own threads while the
API's threads write too. pysqlite begins transactions lazily (DEFERRED), so a
transaction that has read and then wants to write, while another connection
holds the write lock, gets "database is locked" at once: SQLite refuses to
wait there (it would deadlock), whatever the busy timeout. Seen as an HTTP 500
on POST /v2/images on a loaded machine. Taking the write lock when the
transaction begins makes every writer wait its turn (up to the connection's
timeout=30) instead.
"""

from sqlalchemy import event
from sqlalchemy.engine import Engine


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _begin_immediate(conn, _cursor, statement, parameters, _context, _executemany):
    # oslo.db already turns pysqlite's own transaction handling off and emits a plain
    # (DEFERRED) BEGIN itself; make that BEGIN take the write lock.
    if conn.dialect.name == "sqlite" and statement.strip().upper() == "BEGIN":
        statement = "BEGIN IMMEDIATE"
    return statement, parameters


from glance.wsgi.api import application  # noqa: E402,F401
