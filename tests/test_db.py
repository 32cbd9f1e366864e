"""The statement timeout (chatsite/db.py): no query holds the database past CHAT_DB_STATEMENT_TIMEOUT_S."""

import time

import pytest
from django.db import OperationalError, connection, transaction

pytestmark = pytest.mark.django_db

# A query that counts to a billion: minutes of work for SQLite or PostgreSQL.
ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) SELECT count(*) FROM n"


@pytest.mark.skipif(connection.vendor != "sqlite", reason="PostgreSQL's own statement_timeout: the next test")
def test_sqlite_interrupts_a_statement_past_the_timeout(settings):
    guard = next(w for w in connection.execute_wrappers if type(w).__name__ == "StatementDeadline")
    guard.seconds = 0.5
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="interrupted"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(ENDLESS)
        assert time.monotonic() - started < 10
        with connection.cursor() as cursor:  # the connection is still good
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        guard.seconds = settings.CHAT_DB_STATEMENT_TIMEOUT


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's guard: the test above")
def test_postgresql_sets_its_statement_timeout(settings):
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == f"{settings.CHAT_DB_STATEMENT_TIMEOUT}s"
