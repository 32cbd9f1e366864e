"""Scale-out for real: two daphne web processes and two inference workers on PostgreSQL and Redis.

Every process is a real one (CHAT_INFERENCE=worker); the workers serve the
tiny model (replies run to max_new_tokens). The servers come from
DATABASE_URL / REDIS_URL when they point at PostgreSQL / Redis (the Redis
pass of .ci/run), else throwaway ones from scripts.services.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from scripts.services import postgres_server, redis_server
from tests.clients import frames_until_end, joined_tokens, new_conversation, open_socket, sign_up
from tests.live_server import REPO, ServerError, die_with_test_run, server_env, start_daphne

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

WORKER_TIMEOUT_S = 3
START_TIMEOUT = 120.0


class WorkerProcess:
    """`manage.py inference_worker` in its own process, logging to a file."""

    def __init__(self, name: str, env: dict, folder: Path) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "inference_worker", "--name", name],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_test_run,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir):
    """Two web processes (a, b) and two workers on one PostgreSQL and one Redis."""
    with ExitStack() as stack:
        database_url = os.getenv("DATABASE_URL", "")
        if not database_url.startswith("postgres"):
            database_url = stack.enter_context(postgres_server())
        redis_url = os.getenv("REDIS_URL") or stack.enter_context(redis_server())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chatsite-scaleout-")))
        shared = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CHAT_INFERENCE": "worker",
            "CHAT_MODEL": str(tiny_model_dir),
            "CHAT_DEVICE": "cpu",
            "CHAT_WORKER_TIMEOUT_S": WORKER_TIMEOUT_S,
            "CHAT_SAVE_INTERVAL_MS": 0,
            # Room for 1 + 2 requests per worker, so a few chats at once need both.
            "CHAT_MAX_BATCH": 1,
        }
        env = server_env(folder, shared)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        workers = [WorkerProcess(name, env, folder) for name in ("w1", "w2")]
        # The list, not each worker: tests replace killed workers by fresh ones (restart()).
        stack.callback(lambda: [worker.stop() for worker in workers])
        web = []
        try:
            for _ in range(2):
                server = start_daphne(shared, migrate=False, health_timeout=START_TIMEOUT)
                stack.callback(server.stop)
                web.append(server)
            wait_for_workers(web[0].url, 2)
        except (ServerError, TimeoutError):
            for worker in workers:
                sys.stderr.write(f"--- {worker.name} ---\n{worker.log()[-3000:]}\n")
            raise
        yield {"a": web[0], "b": web[1], "workers": workers, "env": env, "folder": folder, "shared": shared}


def wait_for_workers(base_url: str, count: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        health = requests.get(f"{base_url}/healthz", timeout=5).json()
        if health.get("workers", 0) >= count:
            return
        time.sleep(0.2)  # waiting for other processes to start; nothing to await
    raise TimeoutError(f"{count} workers not seen: {health}")


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
        assert joined_tokens(frames_a) == joined_tokens(frames_b) != ""
        messages = stored_messages(session, b.url, conversation_id)
        assert [m["role"] for m in messages] == ["user", "assistant"]  # stored once
        assert messages[1]["content"] == joined_tokens(frames_a)
        assert messages[1]["status"] == "complete" and messages[1]["completion_tokens"] == 16
    # Shared: each worker took some of the six requests.
    for worker in cluster["workers"]:
        assert "accepted" in worker.log(), worker.log()[-2000:]


def test_a_killed_worker_costs_one_reply_and_the_next_goes_to_the_other(cluster):
    a, b = cluster["a"], cluster["b"]
    session = sign_up(a.url, "killer")
    conversation_id = new_conversation(session, a.url)

    async def scenario():
        async with (
            open_socket(a.ws_url, conversation_id, session, a.url) as tab_a,
            open_socket(b.ws_url, conversation_id, session, b.url) as tab_b,
        ):
            await tab_a.send('{"type": "send", "content": "Talk for a long time", "params": {"max_new_tokens": 1000}}')
            frames = []
            while sum(f["type"] == "token" for f in frames) < 2:
                frames.append(json.loads(await asyncio.wait_for(tab_a.recv(), timeout=60)))
            reply_id = frames[-1]["message_id"]
            holder = next(w for w in cluster["workers"] if f"reply {reply_id} accepted" in w.log())
            holder.process.kill()
            killed_at = time.monotonic()
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
    kinds = [f["type"] for f in frames]
    assert kinds[-2:] == ["error", "end"], kinds
    assert frames[-2]["code"] == "generation_failed" and "stopped answering" in frames[-2]["message"]
    assert frames[-1]["finish_reason"] == "interrupted" and frames[-1]["status"] == "interrupted"
    assert detected_after < WORKER_TIMEOUT_S + 2
    assert [f["type"] for f in other][-2:] == ["error", "end"]  # the tab on the other web process too
    messages = stored_messages(session, b.url, conversation_id)
    interrupted = messages[1]
    assert interrupted["status"] == "interrupted" and interrupted["content"] != ""
    # What each tab was sent is what is stored, to the character.
    assert joined_tokens(frames) == interrupted["content"] == other[0].get("content", "") + joined_tokens(other)
    assert after[-1]["finish_reason"] == "length" and joined_tokens(after) == messages[3]["content"]
    assert f"reply {after[-1]['message_id']} accepted" in survivor.log()


def restart(cluster, worker: WorkerProcess) -> None:
    """Replace a killed worker by a fresh one, so later tests have two again."""
    fresh = WorkerProcess(worker.name + "x", cluster["env"], cluster["folder"])
    cluster["workers"][cluster["workers"].index(worker)] = fresh
    wait_for_workers(cluster["a"].url, 2)


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
            await tab.send('{"type": "send", "content": "Talk for a long time", "params": {"max_new_tokens": 1000}}')
            frames = []
            while sum(f["type"] == "token" for f in frames) < 2:
                frames.append(json.loads(await asyncio.wait_for(tab.recv(), timeout=60)))
        return frames  # the tab is closed: nobody watches the reply any more

    frames = asyncio.run(scenario())
    reply_id = frames[-1]["message_id"]
    holder = next(w for w in cluster["workers"] if f"reply {reply_id} accepted" in w.log())
    holder.process.kill()
    killed_at = time.monotonic()
    reply = wait_ended(session, a.url, conversation_id, WORKER_TIMEOUT_S * 4)
    ended_after = time.monotonic() - killed_at
    restart(cluster, holder)
    assert reply["status"] == "interrupted", reply
    assert ended_after < WORKER_TIMEOUT_S + 3
    # At least what the tab saw (the worker went on after it left) and never lost on a reload.
    assert reply["content"].startswith(joined_tokens(frames))


def test_sigterm_on_a_web_process_ends_the_replies_its_sockets_watch(cluster):
    server = start_daphne(dict(cluster["shared"], CHAT_SHUTDOWN_GRACE_S=0), migrate=False, health_timeout=START_TIMEOUT)
    try:
        session = sign_up(server.url, "webstop")
        conversation_id = new_conversation(session, server.url)

        async def scenario():
            async with open_socket(server.ws_url, conversation_id, session, server.url) as tab:
                await tab.send('{"type": "send", "content": "Talk", "params": {"max_new_tokens": 1000}}')
                frames = []
                while sum(f["type"] == "token" for f in frames) < 2:
                    frames.append(json.loads(await asyncio.wait_for(tab.recv(), timeout=60)))
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
