"""The API in worker mode (CHAT_INFERENCE=worker): the real `openai` client, a real daphne, a real worker.

The reply runs in `manage.py inference_worker` (the tiny model) through the
same runner as web chats, over PostgreSQL and Redis.
"""

from __future__ import annotations

import signal

import pytest
import redis

from tests.api.test_api_live import api_key, client, served_model, stored, wait_ended
from tests.clients import sign_up
from tests.worker_support import worker_site as start_site

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


@pytest.fixture(scope="module")
def worker_site(tiny_model_dir, site_servers):
    with start_site(tiny_model_dir, site_servers, "chatsite-api-worker-") as site:
        worker = site.start_worker("api-w1")
        server = site.start_web()
        site.wait_for_workers(1)
        yield server, worker, site.redis_url


def test_the_api_runs_on_an_inference_worker(worker_site):
    server, _, _ = worker_site
    session = sign_up(server.url, "api-worker-user")
    api = client(server, api_key(server, "api-worker-user"))
    messages = [{"role": "user", "content": "Hello"}]

    answer = api.chat.completions.create(model=served_model(server), messages=messages, temperature=0, max_tokens=12)
    reply = stored(session, server, answer.id)["messages"][-1]
    assert reply["content"] == answer.choices[0].message.content != ""
    assert answer.usage.completion_tokens == reply["completion_tokens"] == 12

    stream = api.chat.completions.create(
        model=served_model(server),
        messages=messages,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == answer.choices[0].message.content  # greedy: the same reply
    assert stored(session, server, chunks[0].id)["messages"][-1]["content"] == text

    # `stop` travels to the worker with the other parameters.
    stop = text[6:9]
    cut = api.chat.completions.create(
        model=served_model(server), messages=messages, temperature=0, max_tokens=12, stop=stop
    )
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_client_that_leaves_stops_its_reply_on_the_worker(worker_site):
    server, worker, redis_url = worker_site
    session = sign_up(server.url, "api-worker-leaver")
    api = client(server, api_key(server, "api-worker-leaver"))
    held = api.chat.completions.create(
        model=served_model(server),
        messages=[{"role": "user", "content": "Go on"}],
        temperature=0,
        max_tokens=1000,
        stream=True,
    )
    first = next(chunk for chunk in held if chunk.choices and chunk.choices[0].delta.content)
    # The worker is held still until the web process has sent it the stop, so
    # the reply cannot run to its end first, however slow this machine is.
    worker.process.send_signal(signal.SIGSTOP)
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=60) as watcher, watcher.monitor() as monitor:
            held.close()
            next(command for command in monitor.listen() if "reply.stop" in command["command"])
    finally:
        worker.process.send_signal(signal.SIGCONT)
    reply = wait_ended(session, server, first.id)["messages"][-1]
    assert reply["status"] == "cancelled" and 0 < reply["completion_tokens"] < 1000
