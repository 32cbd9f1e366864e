"""Property-based fuzzing of every WebSocket frame type (issue 29): whatever a client sends on its chat
socket, the server answers with documented frames only, each error in the documented shape, the socket
stays open (no 1011, no close), and a turn it accepts runs on the tiny model to its `end`.

Each example gets a fresh conversation (a user message and a reply, so `edit`,
`switch` and `regenerate` have something to act on) and its own socket.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.strategies import any_text, dumps, json_values, nested, params, plain_text, plausible_params
from tests.live.test_consumer import connect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

FRAME_TYPES = ["send", "stop", "regenerate", "edit", "switch"]
SERVER_FRAMES = {"message", "start", "token", "queued", "end", "error", "path", "feedback"}
ERROR_CODES = {"invalid", "busy", "rate_limited", "generation_failed", "model_unavailable"}
# Every turn is short: the conversation's own max_new_tokens, and the fuzzed ones stay small (strategies).
CHAT_DEFAULTS = {"max_new_tokens": 4, "temperature": 0}


def frames(message_ids: list[int]):
    ids = st.sampled_from(message_ids) | st.integers(-2, 2**63) | json_values
    shaped = st.fixed_dictionaries(
        {"type": st.sampled_from(FRAME_TYPES) | json_values},
        optional={"content": any_text | json_values, "params": params, "message_id": ids, "extra": json_values},
    )
    plausible = st.fixed_dictionaries(
        {"type": st.sampled_from(FRAME_TYPES), "content": plain_text, "message_id": st.sampled_from(message_ids)},
        optional={"params": plausible_params},
    )
    return plausible.map(dumps) | shaped.map(dumps) | json_values.map(dumps) | any_text | st.just(nested(20_000))


async def answer_to(ws) -> list[dict]:
    """The frames one client frame causes: an `error` or a `path`, or a turn's frames up to its `end`."""
    seen: list[dict] = []
    while True:
        frame = await ws.receive_json_from(timeout=60)
        seen.append(frame)
        started = any(f["type"] == "start" for f in seen)
        if frame["type"] == "end" or (not started and frame["type"] in ("error", "path")):
            return seen


@given(data=st.data())
async def test_any_frame_gets_documented_frames_and_the_socket_stays_open(engine, alice, conversation, data):
    chat = await sync_to_async(conversation)(alice, messages=[("user", "Hi"), ("assistant", "Hello")], **CHAT_DEFAULTS)
    message_ids = [m.id async for m in chat.messages.all()]
    raw = data.draw(frames(message_ids), label="frame")
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    try:
        await ws.send_input({"type": "websocket.receive", "text": raw})  # "" included
        answer = await answer_to(ws)
        for frame in answer:
            assert frame["type"] in SERVER_FRAMES, frame
            if frame["type"] == "error":
                assert frame["code"] in ERROR_CODES and isinstance(frame["message"], str) and frame["message"]
        event("a turn ran to its end" if answer[-1]["type"] == "end" else f"answered {answer[-1]['type']}")
        # Still open and answering: nothing streams now, so a stop is refused, on the same socket.
        await ws.send_json_to({"type": "stop"})
        probe = await ws.receive_json_from(timeout=10)
        assert probe == {"type": "error", "code": "invalid", "message": "No reply is being generated."}
        assert not await chat.messages.filter(status="streaming").aexists()
    finally:
        await ws.disconnect()
