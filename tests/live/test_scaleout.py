"""Scale-out for real: two daphne web processes and two inference workers on PostgreSQL and Redis.

Every process is a real one (CHAT_INFERENCE=worker); the workers serve the
tiny model (replies run to max_new_tokens). PostgreSQL comes from
DATABASE_URL when it points at one (the Redis pass of .ci/run), else it is a
throwaway one; Redis is the pytest process's own (tests/worker_support.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from tests.clients import (
    ends_in_error,
    frames_until_end,
    joined_tokens,
    new_conversation,
    open_socket,
    shown_text,
    sign_up,
)
from tests.worker_support import WorkerProcess, worker_site

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

WORKER_TIMEOUT_S = 3
TALK_LONG = '{"type": "send", "content": "Talk for a long time", "params": {"max_new_tokens": 1000}}'


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, site_servers):
    """Two web processes (a, b) and two workers on one PostgreSQL and one Redis."""
    # Room for 1 + 2 requests per worker, so a few chats at once need both.
    settings = {"CHAT_WORKER_TIMEOUT_S": WORKER_TIMEOUT_S, "CHAT_MAX_BATCH": 1}
    with worker_site(tiny_model_dir, site_servers, "chatsite-scaleout-", **settings) as site:
        # The list, not each worker: tests replace killed workers by fresh ones (restart()).
        workers = [site.start_worker(name) for name in ("w1", "w2")]
        web = [site.start_web() for _ in range(2)]
        site.wait_for_workers(2)
        yield {"a": web[0], "b": web[1], "workers": workers, "site": site, "shared": site.shared}


def stored_messages(session, base_url: str, conversation_id: str) -> list[dict]:
    return session.get(f"{base_url}/api/conversations/{conversation_id}/").json()["messages"]


def test_chats_on_both_web_processes_are_served_by_both_workers(cluster):
    a, b = cluster["a"], cluster["b"]
    session = sign_up(a.url, "scaleout-user")  # the session is valid on b too: one database, one key
    conversations = [new_conversation(session, a.url) for _ in range(6)]

    async def chat(index: int, conversation_id: str) -> tuple[list[dict], list[dict]]:
        # One tab on each web process; the message is sent from either.
        async with (
            open_socket(a.ws_url, conversation_id, session, a.url) as tab_a,
            open_socket(b.ws_url, conversation_id, session, b.url) as tab_b,
        ):
            sender = tab_a if index % 2 else tab_b
            await sender.send(
                f'{{"type": "send", "content": "Hello number {index}", "params": {{"max_new_tokens": 16}}}}'
            )
            return await asyncio.gather(frames_until_end(tab_a), frames_until_end(tab_b))

    async def all_chats():
        return await asyncio.gather(*(chat(i, c) for i, c in enumerate(conversations)))

    results = asyncio.run(all_chats())
    for conversation_id, (frames_a, frames_b) in zip(conversations, results, strict=True):
        assert frames_a[-1]["finish_reason"] == "length", frames_a[-1]
        # Each tab shows the whole reply; one on the other process may get its first tokens in `start`.
        assert shown_text(frames_a) == shown_text(frames_b) != ""
        messages = stored_messages(session, b.url, conversation_id)
        assert [m["role"] for m in messages] == ["user", "assistant"]  # stored once
        assert messages[1]["content"] == shown_text(frames_a)
        assert messages[1]["status"] == "complete" and messages[1]["completion_tokens"] == 16
    # Shared: each worker took some of the six requests.
    for worker in cluster["workers"]:
        assert "accepted" in worker.log(), worker.log()[-2000:]


async def until_tokens(tab, count: int = 2) -> list[dict]:
    """The frames up to the reply's `count`th token."""
    frames: list[dict] = []
    while sum(f["type"] == "token" for f in frames) < count:
        frames.append(json.loads(await asyncio.wait_for(tab.recv(), timeout=60)))
    return frames


def kill_holder(cluster, reply_id: int) -> tuple[WorkerProcess, float]:
    """SIGKILL the worker that accepted the reply; returns it and when it was killed."""
    holder = next(w for w in cluster["workers"] if f"reply {reply_id} accepted" in w.log())
    holder.process.kill()
    return holder, time.monotonic()


def test_a_killed_worker_costs_one_reply_and_the_next_goes_to_the_other(cluster):
    a, b = cluster["a"], cluster["b"]
    session = sign_up(a.url, "killer")
    conversation_id = new_conversation(session, a.url)

    async def scenario():
        async with (
            open_socket(a.ws_url, conversation_id, session, a.url) as tab_a,
            open_socket(b.ws_url, conversation_id, session, b.url) as tab_b,
        ):
            await tab_a.send(TALK_LONG)
            frames = await until_tokens(tab_a)
            holder, killed_at = kill_holder(cluster, frames[-1]["message_id"])
            frames += await frames_until_end(tab_a, timeout=WORKER_TIMEOUT_S * 4)
            detected_after = time.monotonic() - killed_at
            other = await frames_until_end(tab_b, timeout=WORKER_TIMEOUT_S * 4)
            # The next message goes to the live worker.
            await tab_b.send('{"type": "send", "content": "Are you still there?", "params": {"max_new_tokens": 8}}')
            after = await frames_until_end(tab_b)
            return holder, frames, other, detected_after, after

    holder, frames, other, detected_after, after = asyncio.run(scenario())
    survivor = next(w for w in cluster["workers"] if w is not holder)
    restart(cluster, holder)
    assert ends_in_error(frames), [f["type"] for f in frames]
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "generation_failed" and "stopped answering" in error["message"]
    assert frames[-1]["finish_reason"] == "interrupted" and frames[-1]["status"] == "interrupted"
    assert detected_after < WORKER_TIMEOUT_S + 2
    assert ends_in_error(other)  # the tab on the other web process too
    messages = stored_messages(session, b.url, conversation_id)
    interrupted = messages[1]
    assert interrupted["status"] == "interrupted" and interrupted["content"] != ""
    # What each tab was sent is what is stored, to the character.
    assert joined_tokens(frames) == interrupted["content"] == other[0].get("content", "") + joined_tokens(other)
    assert after[-1]["finish_reason"] == "length" and joined_tokens(after) == messages[3]["content"]
    assert f"reply {after[-1]['message_id']} accepted" in survivor.log()


def restart(cluster, worker: WorkerProcess) -> None:
    """Replace a killed worker by a fresh one, so later tests have two again."""
    fresh = cluster["site"].start_worker(worker.name + "x")
    cluster["workers"][cluster["workers"].index(worker)] = fresh
    cluster["site"].wait_for_workers(2)


def wait_ended(session, base_url: str, conversation_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        reply = stored_messages(session, base_url, conversation_id)[1]
        if reply["status"] != "streaming" or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)  # the reaper runs in other processes; nothing here to await


def test_a_reply_nobody_watches_is_ended_after_its_worker_is_killed(cluster):
    a = cluster["a"]
    session = sign_up(a.url, "unwatched")
    conversation_id = new_conversation(session, a.url)

    async def scenario():
        async with open_socket(a.ws_url, conversation_id, session, a.url) as tab:
            await tab.send(TALK_LONG)
            return await until_tokens(tab)  # the tab is closed: nobody watches the reply any more

    frames = asyncio.run(scenario())
    holder, killed_at = kill_holder(cluster, frames[-1]["message_id"])
    reply = wait_ended(session, a.url, conversation_id, WORKER_TIMEOUT_S * 4)
    ended_after = time.monotonic() - killed_at
    restart(cluster, holder)
    assert reply["status"] == "interrupted", reply
    assert ended_after < WORKER_TIMEOUT_S + 3
    # At least what the tab saw (the worker went on after it left) and never lost on a reload.
    assert reply["content"].startswith(joined_tokens(frames))


def test_sigterm_on_a_web_process_ends_the_replies_its_sockets_watch(cluster):
    server = cluster["site"].start_web(CHAT_SHUTDOWN_GRACE_S=0)
    try:
        session = sign_up(server.url, "webstop")
        conversation_id = new_conversation(session, server.url)

        async def scenario():
            async with open_socket(server.ws_url, conversation_id, session, server.url) as tab:
                await tab.send('{"type": "send", "content": "Talk", "params": {"max_new_tokens": 1000}}')
                frames = await until_tokens(tab)
                server.process.send_signal(signal.SIGTERM)
                frames += await frames_until_end(tab, timeout=WORKER_TIMEOUT_S * 4)
                return frames

        frames = asyncio.run(scenario())
        assert server.process.wait(60) == 0, server.log()[-3000:]
    finally:
        server.stop()
    assert frames[-1]["finish_reason"] == "interrupted", frames[-3:]
    reply = stored_messages(session, cluster["a"].url, conversation_id)[1]
    assert reply["status"] == "interrupted" and reply["content"] == joined_tokens(frames) != ""
