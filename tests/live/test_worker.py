"""Worker mode in-process: the chat consumer and an inference worker on a real Redis layer.

The consumer (WebsocketCommunicator) and an InferenceWorkerServer on the tiny
model share pytest's event loop but talk only through channels_redis, as
separate processes would. Redis is the session's (tests/worker_support.py's
site_servers: REDIS_URL in the Redis pass of .ci/run, else a throwaway one).
"""

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.utils import timezone

from chatsite.settings import channel_layers as layer_settings
from conversations.live import process, state, titles, turns
from conversations.live.inference_worker import InferenceWorkerServer
from conversations.live.leases import Leases, stop_key
from conversations.models import InferenceWorker, Message
from tests.conftest import local_models
from tests.live.test_consumer import (
    GREEDY,
    LONG,
    connect,
    greedy_alone,
    joined_tokens,
    receive_until_end,
    send_long,
    stored_reply,
)
from tests.live.test_titles import answer_to

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def redis_url(site_servers):
    """The session's Redis (its pytest process's own); each test keeps to a key prefix of its own."""
    return site_servers.redis_url


@pytest.fixture
def worker_mode(settings, redis_url):
    """CHAT_INFERENCE=worker on a Redis layer of this test's own (a fresh key prefix)."""
    layers = layer_settings(redis_url)
    layers["default"]["CONFIG"]["prefix"] = f"test-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = layers
    settings.REDIS_URL = redis_url
    settings.CHAT_INFERENCE = "worker"
    settings.CHAT_MODEL = "tiny-llama"  # the name the workers' tiny engine serves under
    settings.CHAT_WORKER_TIMEOUT = 2.0
    settings.CHAT_SAVE_INTERVAL = 0
    channel_layers.backends = {}
    with state.swapped(process.build(load_engine=False)):  # a web process in worker mode: no model here
        yield settings
    channel_layers.backends = {}


@pytest_asyncio.fixture
async def start_worker(worker_mode, tiny_engine):
    """start_worker(engine=tiny_engine) -> a running InferenceWorkerServer; stopped after the test."""
    running = []

    async def start(engine=tiny_engine, name=None):
        server = InferenceWorkerServer(local_models(engine), name=name or f"test-{uuid.uuid4().hex[:6]}")
        server.handle_signals = False
        task = asyncio.create_task(server.arun())
        running.append((server, task))
        return server, task

    yield start
    for server, task in running:
        server.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


@pytest.fixture
def chat(alice, conversation):
    return conversation(alice, title="")


@pytest.mark.asyncio
async def test_it_streams_a_reply_through_a_worker(start_worker, chat, alice, tiny_engine):
    await start_worker()
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    await ws.send_json_to({"type": "send", "content": "Hello there", "params": GREEDY})
    frames = await receive_until_end(ws)
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["message", "start"] and kinds[-1] == "end"
    assert set(kinds[2:-1]) <= {"token", "queued"}
    reply = await stored_reply(chat)
    assert reply.status == "complete" and reply.content == joined_tokens(frames) != ""
    assert reply.content == await greedy_alone(tiny_engine, [{"role": "user", "content": "Hello there"}])
    await ws.disconnect()


@pytest.mark.asyncio
async def test_the_worker_that_wrote_a_chats_first_reply_writes_its_title(
    start_worker, chat, alice, worker_mode, tiny_engine
):
    worker_mode.CHAT_TITLES = True
    await start_worker()
    ws, _, _ = await connect(chat.id, alice)
    first = "Tell me about lighthouses"
    await ws.send_json_to({"type": "send", "content": first, "params": GREEDY})
    reply = joined_tokens(await receive_until_end(ws))
    titled = await ws.receive_json_from(timeout=30)  # after the `end`
    asked = titles.prompt([{"role": "user", "content": first}], reply)
    assert titled == {"type": "title", "title": titles.clean(await answer_to(tiny_engine, asked))}
    await ws.disconnect()


@pytest.mark.asyncio
async def test_stop_reaches_the_worker_holding_the_reply(start_worker, chat, alice):
    await start_worker()
    ws, _, _ = await connect(chat.id, alice)
    frames = await send_long(ws, "Tell me a long story")
    await ws.send_json_to({"type": "stop"})
    frames += await receive_until_end(ws)
    assert frames[-1]["finish_reason"] == "cancelled"
    reply = await stored_reply(chat)
    assert reply.status == "cancelled" and reply.content == joined_tokens(frames) != ""
    await ws.disconnect()


@pytest.mark.asyncio
async def test_a_stop_sent_before_a_worker_took_the_request_is_not_lost(start_worker, chat, alice, worker_mode):
    # The request waits for the worker started below; the reaper must not give it up first.
    worker_mode.CHAT_WORKER_TIMEOUT = 60
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Tell me a long story", "params": LONG})
    frames = [await ws.receive_json_from(timeout=30) for _ in range(2)]
    assert [f["type"] for f in frames] == ["message", "start"]
    assert await turns.stop(chat.id)  # no worker holds the reply: the control group is empty
    await start_worker()
    frames += await receive_until_end(ws)
    assert frames[-1]["finish_reason"] == "cancelled" and frames[-1]["status"] == "cancelled"
    reply = await stored_reply(chat)
    assert reply.status == "cancelled" and reply.completion_tokens < LONG["max_new_tokens"]
    assert not await state.current().runner.leases.client().exists(stop_key(reply.id))  # the mark went with the reply
    await ws.disconnect()


@pytest.mark.asyncio
async def test_a_socket_joining_mid_reply_gets_the_workers_snapshot(start_worker, tiny_engine, chat, alice):
    await start_worker()
    first, _, _ = await connect(chat.id, alice)
    await first.send_json_to({"type": "send", "content": "Tell me more", "params": LONG})
    early = []
    while sum(f["type"] == "token" for f in early) < 3:
        early.append(await first.receive_json_from(timeout=30))
    # Held between steps while the second tab connects, so the reply cannot end first.
    with tiny_engine.scheduler.paused():
        late, _, _ = await connect(chat.id, alice)
        resumed = [await late.receive_json_from(timeout=30)]
        await late.send_json_to({"type": "stop"})
    resumed += await receive_until_end(late)
    assert resumed[0]["type"] == "start" and resumed[0]["content"].startswith(joined_tokens(early))
    reply = await stored_reply(chat)
    assert resumed[0]["content"] + joined_tokens(resumed) == reply.content
    await receive_until_end(first)
    await first.disconnect()
    await late.disconnect()


@pytest.mark.asyncio
async def test_without_a_worker_the_user_hears_so_within_the_timeout(worker_mode, chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    started = asyncio.get_running_loop().time()
    await ws.send_json_to({"type": "send", "content": "Anyone?", "params": GREEDY})
    frames = [await ws.receive_json_from(timeout=10) for _ in range(4)]
    assert [f["type"] for f in frames] == ["message", "start", "error", "end"]
    assert frames[2]["code"] == "generation_failed" and "No inference worker" in frames[2]["message"]
    assert frames[3]["status"] == "error"
    assert asyncio.get_running_loop().time() - started < worker_mode.CHAT_WORKER_TIMEOUT + 2
    assert (await stored_reply(chat)).status == "error"
    # The conversation is not stuck busy: a worker that comes up answers the next message.
    await ws.disconnect()


@pytest.mark.asyncio
async def test_a_worker_told_to_stop_interrupts_what_outlives_the_drain(start_worker, chat, alice, settings):
    settings.CHAT_SHUTDOWN_GRACE = 0
    server, task = await start_worker()
    ws, _, _ = await connect(chat.id, alice)
    frames = await send_long(ws, "Talk a lot")
    server.stop()
    frames += await receive_until_end(ws)
    errors = [f for f in frames if f["type"] == "error"]
    assert errors and errors[0]["code"] == "generation_failed" and "shutting down" in errors[0]["message"]
    assert frames[-1]["finish_reason"] == "interrupted" and frames[-1]["status"] == "interrupted"
    reply = await stored_reply(chat)
    assert reply.status == "interrupted" and reply.content == joined_tokens(frames) != ""
    await asyncio.wait_for(task, 30)
    assert not await sync_to_async(InferenceWorker.objects.filter(name=server.name).exists)()
    await ws.disconnect()


@pytest.mark.asyncio
async def test_a_worker_takes_no_more_than_it_has_room_for(start_worker, make_engine, alice, conversation):
    engine = await sync_to_async(make_engine)(max_batch_size=1, max_queue=8)
    server, _ = await start_worker(engine)
    assert server.room == 3
    held_when_taking = []
    take = server.get_or_create_application_instance

    def spy(scope_id, scope):
        held_when_taking.append(len(server.held))
        return take(scope_id, scope)

    server.get_or_create_application_instance = spy
    chats = [await sync_to_async(conversation)(alice) for _ in range(5)]
    sockets = [(await connect(c.id, alice))[0] for c in chats]
    for ws in sockets:
        await ws.send_json_to({"type": "send", "content": "Count", "params": {"temperature": 0, "max_new_tokens": 8}})
    frames = await asyncio.gather(*(receive_until_end(ws) for ws in sockets))
    assert all(f[-1]["finish_reason"] == "length" for f in frames)
    assert 1 <= max(held_when_taking) <= 3
    for chat in chats:
        assert (await stored_reply(chat)).status == "complete"
    for ws in sockets:
        await ws.disconnect()


@pytest.mark.asyncio
async def test_the_worker_reports_itself_for_healthz(start_worker, client):
    server, _ = await start_worker()
    row = None
    while row is None:
        row = await sync_to_async(InferenceWorker.objects.filter(name=server.name).first)()
        await asyncio.sleep(0.05)  # the first report is written as the worker starts
    assert row.model_name == "tiny-llama" and row.pid == os.getpid()
    health = await sync_to_async(client.get)("/healthz")
    assert health.status_code == 200
    assert health.json()["mode"] == "worker" and health.json()["workers"] >= 1


def test_healthz_is_503_with_a_reason_when_no_worker_answered(worker_mode, client):
    InferenceWorker.objects.create(name="old", host="h", pid=1, last_seen=timezone.now() - timedelta(minutes=5))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable" and "no inference worker" in response.json()["reason"]


# Redis down at start: one clear line, no traceback.

CLOSED_PORT_ENV = {"REDIS_URL": "redis://127.0.0.1:9/0", "CHAT_INFERENCE": "worker"}


def run_with(env: dict, *args) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_") and k != "REDIS_URL"}
    full.update(env)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=120)


def test_the_worker_command_says_in_one_line_that_redis_is_down():
    result = run_with(CLOSED_PORT_ENV, "manage.py", "inference_worker")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "CommandError: cannot reach REDIS_URL='redis://127.0.0.1:9/0': Error 111 connecting to 127.0.0.1:9. "
        "Connection refused."
    ]


def test_a_web_process_in_worker_mode_says_in_one_line_that_redis_is_down():
    result = run_with(CLOSED_PORT_ENV, "-c", "import chatsite.asgi")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatsite: cannot reach REDIS_URL='redis://127.0.0.1:9/0'")


@pytest.mark.asyncio
async def test_the_reaper_ends_a_reply_whose_lease_expired_with_the_text_its_stream_holds(worker_mode, chat):
    leases = Leases()
    old = timezone.now() - timedelta(seconds=60)
    # Its turn started a minute ago too (the start of a turn moves its conversation; a Continue's reply is old).
    await sync_to_async(type(chat).objects.filter(id=chat.id).update)(updated_at=old)
    reply = await sync_to_async(Message.objects.create)(
        conversation=chat, role="assistant", status="streaming", content="Hel", created_at=old
    )
    young = await sync_to_async(Message.objects.create)(conversation=chat, role="assistant", status="streaming")
    record = leases.record(reply.id)
    await record.open()
    await record.append("Hello, ")
    await record.append("world")
    assert await leases.reap() == 1
    await sync_to_async(reply.refresh_from_db)()
    assert reply.status == "interrupted" and reply.content == "Hello, world"  # the stream's, not the saved "Hel"
    await sync_to_async(young.refresh_from_db)()
    assert young.status == "streaming"  # too young to have been handed over: left alone
    assert await leases.reap() == 0


@sync_to_async
def cut_short_reply(chat, text: str) -> Message:
    chat.append("user", "Tell me a story")
    return chat.append("assistant", text, status="complete", finish_reason="length", completion_tokens=3)


@pytest.mark.asyncio
async def test_a_worker_continues_a_reply_in_place(start_worker, chat, alice):
    await start_worker()
    reply = await cut_short_reply(chat, "Once upon a time")
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "continue", "params": GREEDY})
    frames = await receive_until_end(ws)
    assert frames[0]["type"] == "start" and frames[0]["content"] == "Once upon a time"
    await sync_to_async(reply.refresh_from_db)()
    assert reply.status == "complete" and reply.content == "Once upon a time" + joined_tokens(frames)
    assert reply.completion_tokens == 3 + 12
    await ws.disconnect()


@pytest.mark.asyncio
async def test_a_continue_no_worker_takes_keeps_the_text_the_reply_had(worker_mode, chat, alice):
    reply = await cut_short_reply(chat, "Once upon a time")
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "continue", "params": GREEDY})
    frames = [await ws.receive_json_from(timeout=10) for _ in range(3)]
    assert [f["type"] for f in frames] == ["start", "error", "end"]
    assert "No inference worker" in frames[1]["message"]
    await sync_to_async(reply.refresh_from_db)()
    assert (reply.status, reply.content) == ("error", "Once upon a time")
    await ws.disconnect()
