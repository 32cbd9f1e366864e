"""End to end: a real daphne process with the real default model, a real WebSocket."""

import asyncio
import json

import pytest
import requests
import websockets

from tests.clients import frames_until_end, joined_tokens, new_conversation, open_socket, sign_up

pytestmark = pytest.mark.e2e


async def chat_turn(server, session, conversation_id: str, text: str) -> list[dict]:
    async with open_socket(server.ws_url, conversation_id, session, origin=server.url) as socket:
        await socket.send(json.dumps({"type": "send", "content": text, "params": {"max_new_tokens": 24}}))
        return await frames_until_end(socket, timeout=120)


def test_a_user_chats_with_the_real_model_over_a_real_socket(real_daphne_server):
    base = real_daphne_server.url
    health = requests.get(f"{base}/healthz").json()
    assert health["status"] == "ok" and health["device"] == "cpu"

    session = sign_up(base, "erin")
    conversation_id = new_conversation(session, base)  # greedy
    frames = asyncio.run(chat_turn(real_daphne_server, session, conversation_id, "What is the capital of France?"))

    assert [f["type"] for f in frames][:2] == ["message", "start"]
    assert frames[-1]["type"] == "end", frames[-1]
    streamed = joined_tokens(frames)
    assert "Paris" in streamed

    stored = session.get(f"{base}/api/conversations/{conversation_id}/").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == streamed
    assert stored["messages"][1]["status"] == "complete"
    assert stored["title"] == "What is the capital of France?"


def test_a_foreign_origin_is_refused_by_the_real_server(real_daphne_server):
    session = sign_up(real_daphne_server.url, "frank")
    conversation_id = new_conversation(session, real_daphne_server.url)

    async def attempt():
        async with open_socket(real_daphne_server.ws_url, conversation_id, session, origin="http://evil.example"):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(attempt())
