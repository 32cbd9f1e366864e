# Search on PostgreSQL reads each message's tsvector from a stored generated
# column instead of computing to_tsvector(content) per row (conversations/
# history.py). A word in a third of all messages made the old plan fetch every
# matching message before it could keep to the newest page; walking the
# user's conversations newest first and checking each one's messages is fast
# only when that check is cheap, and to_tsvector on every message it visits is
# not (measured: docs/history.md, "Numbers").
#
# The column exists on PostgreSQL only, so it is not a model field: no other
# query selects it, and the database keeps it right on every insert and
# update. Adding it rewrites the messages table under an exclusive lock
# (about 15 s per 100,000 messages on the 2-core development machine).
# SQLite has no tsvector: there the operation does nothing.

from django.db import migrations

COLUMN_SQL = (
    "ALTER TABLE conversations_message ADD COLUMN search_vector tsvector"
    " GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, COALESCE(content, ''))) STORED"
)
OLD_INDEX_SQL = (
    "CREATE INDEX msg_content_fts ON conversations_message"
    " USING gin (to_tsvector('simple'::regconfig, COALESCE(content, '')))"
)


def add_search_vector(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(COLUMN_SQL)
    schema_editor.execute("CREATE INDEX msg_search_vector ON conversations_message USING gin (search_vector)")
    # The expression index of 0003 served the old queries; nothing uses it now.
    schema_editor.execute("DROP INDEX IF EXISTS msg_content_fts")


def remove_search_vector(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(OLD_INDEX_SQL)
    schema_editor.execute("ALTER TABLE conversations_message DROP COLUMN search_vector")  # drops its index too


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0006_feedback_quota"),
    ]

    operations = [
        migrations.RunPython(add_search_vector, remove_search_vector),
    ]
