"""Real daphne processes stopped mid-reply (SIGTERM) and a real SQLite lock held by another connection.

The servers serve the tiny model (its replies run to max_new_tokens), on a
fresh SQLite file each; the test reads that file directly to compare what
was stored with what the socket was sent.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import pytest
import websockets

from tests.clients import frames_until_end, joined_tokens, new_conversation, open_socket, sign_up
from tests.live_server import tiny_model

pytestmark = pytest.mark.e2e

LONG = {"max_new_tokens": 4000}  # tens of seconds on the tiny model: always cut off
EXIT_TIMEOUT = 60


@pytest.fixture
def tiny_server(daphne_factory, tiny_model_dir):
    def start(**env):
        return daphne_factory({**tiny_model(tiny_model_dir), **env})

    return start


def stored(server, message_id: int) -> tuple[str, str, str]:
    with sqlite3.connect(server.workdir / "db.sqlite3") as db:
        return db.execute(
            "SELECT content, status, finish_reason FROM conversations_message WHERE id = ?", (message_id,)
        ).fetchone()


def streaming_count(server) -> int:
    with sqlite3.connect(server.workdir / "db.sqlite3") as db:
        return db.execute("SELECT count(*) FROM conversations_message WHERE status = 'streaming'").fetchone()[0]


async def until_tokens(socket, count: int) -> list[dict]:
    frames: list[dict] = []
    while sum(f["type"] == "token" for f in frames) < count:
        frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=120)))
    return frames


async def rest_until_close(socket) -> list[dict]:
    """Every frame up to the server's close."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=EXIT_TIMEOUT)))
    except websockets.exceptions.ConnectionClosed:
        return frames


def test_sigterm_mid_reply_ends_it_for_the_socket_stores_what_was_sent_and_exits_0(tiny_server):
    server = tiny_server(CHAT_SHUTDOWN_GRACE_S=0)
    session = sign_up(server.url, "sigterm")
    conversation_id = new_conversation(session, server.url)

    async def scenario():
        async with open_socket(server.ws_url, conversation_id, session, server.url) as socket:
            await socket.send(json.dumps({"type": "send", "content": "Talk", "params": LONG}))
            frames = await until_tokens(socket, 3)
            server.process.send_signal(signal.SIGTERM)
            frames += await rest_until_close(socket)
            return frames, socket.close_code

    frames, close_code = asyncio.run(scenario())
    assert server.process.wait(EXIT_TIMEOUT) == 0, server.log()[-3000:]
    kinds = [f["type"] for f in frames]
    assert kinds[-2:] == ["error", "end"], kinds[-5:]
    assert "shutting down" in frames[-2]["message"]
    assert frames[-1]["finish_reason"] == "interrupted" and frames[-1]["status"] == "interrupted"
    assert close_code == 4503, server.log()[-4000:]
    content, status, reason = stored(server, frames[-1]["message_id"])
    assert (status, reason) == ("interrupted", "interrupted")
    assert content == joined_tokens(frames) != ""
    assert streaming_count(server) == 0
    # A graceful stop, even one that cuts a reply off, leaves no traceback in the log.
    assert "terminate called" not in server.log() and "Traceback" not in server.log()


def test_sigterm_refuses_new_turns_and_gives_live_replies_the_grace(tiny_server):
    server = tiny_server(CHAT_SHUTDOWN_GRACE_S=120)
    session = sign_up(server.url, "grace")
    first, second = new_conversation(session, server.url), new_conversation(session, server.url)

    async def scenario():
        async with (
            open_socket(server.ws_url, first, session, server.url) as live,
            open_socket(server.ws_url, second, session, server.url) as idle,
        ):
            await live.send(json.dumps({"type": "send", "content": "Count", "params": {"max_new_tokens": 300}}))
            frames = await until_tokens(live, 1)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.wait_for_log, "shutting down:", EXIT_TIMEOUT)
            await idle.send(json.dumps({"type": "send", "content": "Hello?"}))
            refused = json.loads(await asyncio.wait_for(idle.recv(), timeout=30))
            frames += await frames_until_end(live, timeout=EXIT_TIMEOUT)
            return frames, refused

    frames, refused = asyncio.run(scenario())
    assert refused["type"] == "error" and refused["code"] == "busy" and "restarting" in refused["message"]
    assert frames[-1]["finish_reason"] == "length"  # it had the time to finish
    assert server.process.wait(EXIT_TIMEOUT) == 0, server.log()[-3000:]
    assert "Traceback" not in server.log()
    content, status, _ = stored(server, frames[-1]["message_id"])
    assert status == "complete" and content == joined_tokens(frames)
    assert streaming_count(server) == 0


def test_a_locked_database_ends_the_reply_keeps_the_text_and_the_chat_usable(tiny_server):
    server = tiny_server(CHAT_DB_LOCK_TIMEOUT_S=1)
    session = sign_up(server.url, "locked")
    conversation_id = new_conversation(session, server.url)
    lock = sqlite3.connect(server.workdir / "db.sqlite3", isolation_level=None)

    async def scenario():
        async with open_socket(server.ws_url, conversation_id, session, server.url) as socket:
            await socket.send(json.dumps({"type": "send", "content": "Talk", "params": LONG}))
            frames = await until_tokens(socket, 3)
            lock.execute("BEGIN EXCLUSIVE")  # another connection holds the database
            await socket.send(json.dumps({"type": "stop"}))
            frames += await frames_until_end(socket, timeout=EXIT_TIMEOUT)
            await socket.send(json.dumps({"type": "send", "content": "Now?", "params": {"max_new_tokens": 4}}))
            while_locked = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            lock.execute("ROLLBACK")
            await asyncio.to_thread(server.wait_for_log, "its end is stored", EXIT_TIMEOUT)
            await socket.send(json.dumps({"type": "send", "content": "And now?", "params": {"max_new_tokens": 4}}))
            after = await frames_until_end(socket, timeout=EXIT_TIMEOUT)
            return frames, while_locked, after

    try:
        frames, while_locked, after = asyncio.run(scenario())
    finally:
        lock.close()
    kinds = [f["type"] for f in frames]
    assert kinds[-2:] == ["error", "end"] and frames[-2]["code"] == "generation_failed", kinds[-4:]
    assert frames[-1]["status"] == "error"
    assert while_locked["type"] == "error" and while_locked["code"] == "busy"
    content, status, _ = stored(server, frames[-1]["message_id"])
    assert status == "error" and content == joined_tokens(frames) != ""
    assert after[-1]["type"] == "end" and after[-1]["finish_reason"] == "length"
    assert streaming_count(server) == 0
