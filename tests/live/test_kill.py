"""A real daphne killed outright (SIGKILL) mid-reply (issue 29, item 9): the reply is still charged for
the tokens it produced, as the partial saves recorded them, once a server starts again on its database."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from tests.clients import frames_until_end, new_conversation, open_socket, sign_up
from tests.live.test_shutdown import until_tokens
from tests.live_server import tiny_model

pytestmark = pytest.mark.e2e

LONG = {"max_new_tokens": 4000}  # tens of seconds on the tiny model: killed long before its end


def row(database, sql: str, *args):
    with sqlite3.connect(database) as db:
        return db.execute(sql, args).fetchone()


def test_a_reply_killed_with_its_server_is_charged_for_what_it_produced(daphne_factory, tiny_model_dir):
    # Partial saves every chunk, so what the reply produced before the kill is on disk.
    env = {**tiny_model(tiny_model_dir), "CHAT_USER_DAILY_TOKENS": 100_000, "CHAT_SAVE_INTERVAL_MS": 0}
    first = daphne_factory(env)
    database = first.workdir / "db.sqlite3"
    session = sign_up(first.url, "killed")
    conversation_id = new_conversation(session, first.url)

    async def until_killed() -> int:
        async with open_socket(first.ws_url, conversation_id, session, first.url) as socket:
            await socket.send(json.dumps({"type": "send", "content": "Talk", "params": LONG}))
            frames = await until_tokens(socket, 20)
            first.process.kill()
            first.process.wait(30)
            return next(f["message_id"] for f in frames if f["type"] == "start")

    message_id = asyncio.run(until_killed())
    prompt, completion = row(
        database, "SELECT prompt_tokens, completion_tokens FROM conversations_message WHERE id = ?", message_id
    )
    # The socket had frame 20, published after chunk 19 was saved.
    assert prompt > 0 and completion >= 19

    # A new server on the same database: the killed reply is marked interrupted; the next turn settles its hold.
    second = daphne_factory({**env, "DATABASE_URL": f"sqlite:///{database}"}, migrate=False)

    async def next_turn() -> dict:
        async with open_socket(second.ws_url, conversation_id, session, second.url) as socket:
            await socket.send(json.dumps({"type": "send", "content": "Again", "params": {"max_new_tokens": 4}}))
            return (await frames_until_end(socket))[-1]

    end = asyncio.run(next_turn())
    status = row(database, "SELECT status FROM conversations_message WHERE id = ?", message_id)[0]
    tokens, reserved = row(database, "SELECT tokens, reserved FROM conversations_dailyusage")
    assert status == "interrupted"
    # The killed reply's hold settles when the next turn starts; the new reply's when it ends.
    assert tokens == prompt + completion + end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]
    assert reserved == 0
