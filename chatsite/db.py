"""The statement timeout: no query may hold the database longer than CHAT_DB_STATEMENT_TIMEOUT_S.

One query whose cost grows with one user's data (the admin's search over a
chat of 50,000 messages once ran for minutes) must not take the site down:
on SQLite it holds the one write lock, so every write (a login) fails
meanwhile. PostgreSQL has `statement_timeout` (set in chatsite.settings);
SQLite has no such setting, so each statement here gets a deadline that
SQLite's progress handler checks while it runs. Past it, the query fails
with OperationalError ("interrupted"), as PostgreSQL's does with its own
error: the request gets an error, the site stays up.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db.backends.signals import connection_created

# SQLite calls the progress handler every this many virtual-machine steps (about a millisecond).
PROGRESS_STEPS = 10_000


def install() -> None:
    """Guard every SQLite connection this process opens (conversations.apps calls it once)."""
    connection_created.connect(_guard_sqlite, dispatch_uid="chatsite.db.statement_timeout")


def _guard_sqlite(sender, connection, **kwargs) -> None:
    if connection.vendor != "sqlite" or not settings.CHAT_DB_STATEMENT_TIMEOUT:
        return
    deadline = StatementDeadline(settings.CHAT_DB_STATEMENT_TIMEOUT)
    connection.connection.set_progress_handler(deadline.passed, PROGRESS_STEPS)
    # The wrapper list belongs to Django's connection object, which outlives reconnections.
    connection.execute_wrappers[:] = [w for w in connection.execute_wrappers if not isinstance(w, StatementDeadline)]
    connection.execute_wrappers.append(deadline)


class StatementDeadline:
    """An execute wrapper that gives each statement `seconds`; `passed` tells SQLite when to interrupt it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def __call__(self, execute, sql, params, many, context):
        self.deadline = time.monotonic() + self.seconds
        try:
            return execute(sql, params, many, context)
        finally:
            # Commits and fetches after the statement are not timed.
            self.deadline = None

    def passed(self) -> int:
        """Non-zero makes SQLite abort the running statement."""
        return int(self.deadline is not None and time.monotonic() > self.deadline)
