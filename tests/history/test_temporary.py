"""Temporary chats (docs/history.md): never listed, searched or exported, and removed by the sweep
(conversations.live.sweep) once no tab has had one open for CHAT_TEMPORARY_GRACE_S."""

import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from conversations.live import state, sweep
from conversations.models import Conversation, Message
from tests.live.test_consumer import connect
from tests.live_server import REPO, fresh_sqlite_database, server_env, start_daphne

pytestmark = pytest.mark.django_db


def grace() -> timedelta:
    return timedelta(seconds=settings.CHAT_TEMPORARY_GRACE)


def new_temporary(client, **fields) -> Conversation:
    response = client.post("/c/new/", {"temporary": "1", **fields})
    assert response.status_code == 302
    return Conversation.objects.get(id=response.url.split("/")[2])


def test_a_temporary_chat_is_marked_and_kept_out_of_the_list_search_and_exports(alice_client, alice, conversation):
    chat = new_temporary(alice_client)
    assert chat.temporary and timezone.now() - chat.seen_at < timedelta(seconds=5)
    Message.objects.create(conversation=chat, role="user", content="a secret walrus")
    chat.title = "Walrus secrets"
    chat.save()
    conversation(alice, title="Kept chat")
    page = alice_client.get(f"/c/{chat.id}/").content.decode()
    assert 'id="temporary-badge"' in page and "Export as JSON" not in page
    assert alice_client.get(f"/api/conversations/{chat.id}/").json()["temporary"] is True
    for query in ("", "?q=walrus", "?q=secrets"):
        listed = alice_client.get(f"/api/conversations/{query}").json()["conversations"]
        assert [c["title"] for c in listed] == (["Kept chat"] if not query else []), query
    assert "Walrus secrets" not in alice_client.get("/").content.decode()
    for export in ("export.json", "export.md"):
        assert alice_client.get(f"/c/{chat.id}/{export}").status_code == 404


def test_the_welcome_page_offers_the_toggle_and_staff_can_turn_temporary_chats_off(alice_client, settings):
    assert 'name="temporary"' in alice_client.get("/").content.decode()
    settings.CHAT_TEMPORARY_CHATS = False
    assert 'name="temporary"' not in alice_client.get("/").content.decode()
    response = alice_client.post("/c/new/", {"temporary": "1"}, follow=True)
    assert "Temporary chats are turned off on this site." in response.content.decode()
    assert not Conversation.objects.exists()


def test_the_sweep_removes_a_temporary_chat_no_tab_has_had_open_for_the_grace(alice, conversation):
    now = timezone.now()
    idle = conversation(alice, temporary=True, seen_at=now - grace() - timedelta(seconds=1))
    Message.objects.create(conversation=idle, role="user", content="gone with it")
    recent = conversation(alice, temporary=True, seen_at=now - grace() + timedelta(seconds=5))
    open_here = conversation(alice, temporary=True, seen_at=now - 2 * grace())
    streaming = conversation(alice, temporary=True, seen_at=now - 2 * grace())
    Message.objects.create(conversation=streaming, role="assistant", status=Message.Status.STREAMING)
    ordinary = conversation(alice, updated_at=now - timedelta(days=400))

    assert sweep.sweep(open_ids=[str(open_here.id)], now=now) == 1
    left = set(Conversation.objects.values_list("id", flat=True))
    assert left == {recent.id, open_here.id, streaming.id, ordinary.id}
    assert not Message.objects.filter(conversation_id=idle.id).exists()
    # A tab open in this process counts as seen now; its grace starts again once it closes.
    open_here.refresh_from_db()
    assert open_here.seen_at == now
    # Once its reply has ended, the chat goes at the next sweep.
    Message.objects.filter(conversation=streaming).update(status=Message.Status.COMPLETE)
    assert sweep.sweep(now=now) == 1
    assert not Conversation.objects.filter(id=streaming.id).exists()


def test_the_sweep_runs_often_enough_for_the_grace():
    assert sweep.period() == min(30.0, settings.CHAT_TEMPORARY_GRACE / 3)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_tab_opening_or_closing_a_temporary_chat_starts_its_grace_again(engine, alice, conversation):
    long_ago = timezone.now() - 2 * grace()
    chat = await sync_to_async(conversation)(alice, temporary=True, seen_at=long_ago)
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    opened = (await Conversation.objects.aget(id=chat.id)).seen_at
    assert opened > long_ago
    # What each sweep of this process marks seen while the tab stays open.
    assert state.current().open_temporary_chats() == {str(chat.id)}
    await Conversation.objects.filter(id=chat.id).aupdate(seen_at=long_ago)
    await ws.disconnect()
    closed = (await Conversation.objects.aget(id=chat.id)).seen_at
    assert closed > long_ago
    # Within the grace of the close the sweep keeps it; after it, the chat is gone.
    assert await sync_to_async(sweep.sweep)(now=closed + grace() - timedelta(seconds=1)) == 0
    assert await sync_to_async(sweep.sweep)(now=closed + grace() + timedelta(seconds=1)) == 1


CREATE_CHATS = """
from datetime import timedelta
from django.contrib.auth.models import User
from django.utils import timezone
from conversations.models import Conversation
owner = User.objects.create(username="temporary-owner")
# Its last tab closed an hour ago, and the server stopped before its grace was up.
gone = Conversation.objects.create(user=owner, temporary=True, seen_at=timezone.now() - timedelta(hours=1))
kept = Conversation.objects.create(user=owner, title="An ordinary chat")
print(gone.id.hex, kept.id.hex)
"""


def stored_ids(database: Path) -> set[str]:
    with closing(sqlite3.connect(database)) as db:
        return {row[0] for row in db.execute("SELECT id FROM conversations_conversation")}


@pytest.mark.e2e
@pytest.mark.django_db(False)
def test_a_temporary_chat_whose_grace_ran_out_while_no_server_ran_goes_once_one_starts(tmp_path):
    database = tmp_path / "db.sqlite3"
    fresh_sqlite_database(database, tmp_path / "migrate.log")
    env = {"CHAT_INFERENCE": "none", "CHAT_TEMPORARY_GRACE_S": "3", "DATABASE_URL": f"sqlite:///{database}"}
    made = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", CREATE_CHATS],
        cwd=REPO,
        env=server_env(tmp_path, env),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    gone, kept = made.stdout.split()[-2:]  # after whatever start-up logged
    assert stored_ids(database) == {gone, kept}
    with start_daphne(env, migrate=False) as server:
        # No socket will ever close it again: the sweep's timer alone removes it.
        server.wait_for_log("removed 1 temporary or deleted chat(s)", timeout=30)
        assert stored_ids(database) == {kept}
