"""Worker mode: a stop sent before any worker took the reply is not lost.

`reply.stop` goes to the conversation's control group, which a worker joins
only once it has taken the request; before that the stop lives as the reply's
stop mark in Redis (conversations.live.leases). Here the only worker is
held still (SIGSTOP) while a reply is asked for and stopped, so the request
waits for it as it would behind busy workers; once it runs again it must end
that reply as `cancelled` at once, not generate it to its full length.

Real processes: a daphne and an inference worker on PostgreSQL and Redis.
The test waits on events (frames, Redis MONITOR), never on time.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import time
from contextlib import contextmanager

import pytest
import redis

from tests.api.test_api_live import api_key, served_model, wait_ended
from tests.clients import frames_until_end, new_conversation, open_socket, sign_up
from tests.worker_support import worker_site

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

ASKED = 1000


@pytest.fixture(scope="module")
def site(tiny_model_dir, site_servers):
    # A request that no worker takes is given up after CHAT_WORKER_TIMEOUT_S;
    # these tests hold their request back only until events they await, far less.
    with worker_site(tiny_model_dir, site_servers, "chatsite-worker-stop-", CHAT_WORKER_TIMEOUT_S=120) as site:
        worker = site.start_worker("stop-w1")
        server = site.start_web()
        site.wait_for_workers(1)
        yield server, worker, site.redis_url


@contextmanager
def held_still(worker):
    """The worker takes nothing while the block runs (as if it were busy)."""
    worker.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.process.send_signal(signal.SIGCONT)


def wait_for_command(monitor, *parts: str, timeout: float = 60) -> str:
    """The next command Redis runs that contains every part (MONITOR's view); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    for command in monitor.listen():
        if all(part in command["command"] for part in parts):
            return command["command"]
        assert time.monotonic() < deadline, f"Redis ran no command with {parts} in {timeout:.0f} s"
    raise AssertionError("MONITOR ended")


def test_a_stop_sent_while_the_request_waits_for_a_worker_ends_the_reply(site):
    server, worker, redis_url = site
    session = sign_up(server.url, "early-stopper")
    conversation_id = new_conversation(session, server.url)

    async def scenario():
        async with open_socket(server.ws_url, conversation_id, session, server.url) as tab:
            with held_still(worker):
                await tab.send(json.dumps({"type": "send", "content": "Talk", "params": {"max_new_tokens": ASKED}}))
                frames = []
                while not frames or frames[-1]["type"] != "start":
                    frames.append(json.loads(await asyncio.wait_for(tab.recv(), timeout=60)))
                reply_id = frames[-1]["message_id"]
                with redis.Redis.from_url(redis_url, socket_timeout=60) as watcher, watcher.monitor() as monitor:
                    await tab.send('{"type": "stop"}')
                    wait_for_command(monitor, "SET", f"reply:{reply_id}:stop")  # the stop is on its way
            return reply_id, frames + await frames_until_end(tab)

    reply_id, frames = asyncio.run(scenario())
    end = frames[-1]
    assert end["finish_reason"] == "cancelled" and end["status"] == "cancelled", end
    assert end["usage"]["completion_tokens"] < ASKED
    reply = session.get(f"{server.url}/api/conversations/{conversation_id}/").json()["messages"][-1]
    assert reply["id"] == reply_id and reply["status"] == "cancelled" and reply["completion_tokens"] < ASKED
    assert f"reply {reply_id} was stopped (cancelled) before it was accepted" in worker.log()


def test_an_api_client_that_leaves_before_a_worker_took_its_reply_stops_it(site):
    server, worker, redis_url = site
    session = sign_up(server.url, "early-leaver")
    key = api_key(server, "early-leaver")
    body = {
        "model": served_model(server),
        "messages": [{"role": "user", "content": "Go on"}],
        "max_tokens": ASKED,
        "stream": True,
    }
    with held_still(worker):
        with redis.Redis.from_url(redis_url, socket_timeout=60) as watcher, watcher.monitor() as monitor:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            connection.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            wait_for_command(monitor, "ZADD", "inference.requests")  # handed to the workers
            connection.close()  # the client leaves before any worker took the reply
            wait_for_command(monitor, "SET", ":stop")
    conversations = session.get(f"{server.url}/api/conversations/?source=api").json()["conversations"]
    completion_id = f"chatcmpl-{conversations[0]['id']}"
    reply = wait_ended(session, server, completion_id)["messages"][-1]
    assert reply["status"] == "cancelled" and reply["completion_tokens"] < ASKED
    assert f"reply {reply['id']} was stopped (cancelled) before it was accepted" in worker.log()
