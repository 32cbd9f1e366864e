"""Worker mode with an endpoint's model: the turn runs in an inference worker, as local ones do.

The web side (this test's consumer) and an InferenceWorkerServer share
pytest's loop but talk only through Redis; the worker streams from a real
llama.cpp server, writing the reply's Redis Stream before each chunk is
published, so nothing a user saw is lost if the worker dies (docs/models.md).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from conversations.endpoints.registry import Registry
from conversations.live import process, state
from conversations.live.inference_worker import InferenceWorkerServer
from tests.live.test_consumer import connect, joined_tokens, receive_until_end, stored_reply
from tests.live.test_worker import redis_url, worker_mode  # noqa: F401  (the fixtures of worker mode)

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ON_LLAMA = {"temperature": 0, "model": "smollm2"}


@pytest_asyncio.fixture
async def endpoint_worker(worker_mode, tiny_engine, llama_server):  # noqa: F811
    """A web side and one worker that both know the llama.cpp server's smollm2."""
    endpoints = {"llama": {"url": llama_server.url, "key": ""}}
    worker_mode.CHAT_ENDPOINTS = endpoints
    with state.swapped(process.build(load_engine=False)) as web:
        await sync_to_async(web.models.refresh)()
        models = Registry(tiny_engine, "tiny-llama", endpoints, admin_endpoints=False)
        models.refresh()
        worker = InferenceWorkerServer(models, name=f"test-{uuid.uuid4().hex[:6]}")
        worker.handle_signals = False
        task = asyncio.create_task(worker.arun())
        yield worker
        worker.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


@pytest.fixture
def chat(alice, conversation):
    return conversation(alice, title="", model_name="tiny-llama")


async def test_an_endpoint_turn_runs_in_a_worker_and_a_stop_reaches_it(endpoint_worker, chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Hello there", "params": ON_LLAMA | {"max_new_tokens": 12}})
    frames = await receive_until_end(ws, timeout=60)
    assert frames[1]["model"] == "smollm2" and frames[-1]["status"] == "complete"
    reply = await stored_reply(chat)
    assert reply.content == joined_tokens(frames) != "" and reply.model_name == "smollm2"
    # A long one, stopped mid-reply: it ends cancelled, and what was sent is what is stored.
    long = ON_LLAMA | {"max_new_tokens": 2000}
    await ws.send_json_to({"type": "send", "content": "Write a long story.", "params": long})
    frames = []
    while sum(frame["type"] == "token" for frame in frames) < 2:
        frames.append(await ws.receive_json_from(timeout=60))
    await ws.send_json_to({"type": "stop"})
    frames += await receive_until_end(ws, timeout=60)
    assert frames[-1]["status"] == "cancelled" and frames[-1]["usage"]["completion_tokens"] < 2000
    reply = await stored_reply(chat)
    assert reply.status == "cancelled" and reply.content == joined_tokens(frames) != ""
    await ws.disconnect()
