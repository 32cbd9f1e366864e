"""`make soak`: users doing random sends, stops, reloads, drops and regenerates against real servers.

    python -m bench.soak [--minutes 3] [--users 4] [--modes local,worker,endpoint] [--kill-every 60]

The model is tests' tiny one (the real architecture and tokenizer, random
weights: fast, its replies run to max_new_tokens) unless --model default
asks for the packaged one. Local mode: one daphne on SQLite. Worker mode: one
daphne and two `inference_worker`s on a throwaway PostgreSQL and Redis, one
worker killed (SIGKILL) and restarted every --kill-every seconds. Endpoint
mode: one daphne with no model of its own (CHAT_INFERENCE=none) whose chats
run on an OpenAI-compatible endpoint, llama.cpp's server on the packaged
SmolLM2 (tests/endpoint_support.py).

Each user has a conversation and loops: send (or regenerate) a message and
then, at random, read the reply to its end, stop it, drop the socket and
reconnect (the reconnect resumes the reply), or reload (reconnect at once).
Every socket remembers, per reply, the text it was sent. At the end, after
the replies have settled, every stored reply is compared with what its
sockets were sent: a socket that saw the `end` must have been sent exactly
the stored text, one that left before it a prefix of it. Nothing may be left
`streaming`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from scripts.services import postgres_server, redis_server
from tests.clients import new_conversation, open_socket, sign_up
from tests.live_server import REPO, server_env, start_daphne

SETTLE_SECONDS = 30.0
WORKER_TIMEOUT_S = 5
RECV_TIMEOUT = 120.0
# A reconnecting socket hears of a live reply at once; silence this long means none is live.
RESUME_WAIT = 3.0


@dataclass
class Tally:
    turns: int = 0
    stops: int = 0
    drops: int = 0
    reloads: int = 0
    regenerates: int = 0
    kills: int = 0
    errors: int = 0
    # reply id -> (text a socket was sent, whether that socket saw the end), one entry per socket view
    seen: list[tuple[str, int, str, bool]] = field(default_factory=list)


class View:
    """One socket's view of the replies it was sent."""

    def __init__(self) -> None:
        self.text: dict[int, str] = {}
        self.ended: set[int] = set()

    def take(self, frame: dict) -> None:
        kind, message_id = frame["type"], frame.get("message_id")
        if kind == "start":
            self.text[message_id] = frame.get("content", "")
        elif kind == "token":
            self.text[message_id] = self.text.get(message_id, "") + frame["text"]
        elif kind == "end":
            self.ended.add(message_id)


async def next_frame(socket, view: View) -> dict:
    try:
        frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=RECV_TIMEOUT))
    except TimeoutError:
        raise AssertionError(f"no frame for {RECV_TIMEOUT:.0f} s; this socket's replies so far: {view.text}") from None
    view.take(frame)
    return frame


async def user(server, index: int, deadline: float, tally: Tally, rng: random.Random) -> None:
    session = await asyncio.to_thread(sign_up, server.url, f"soak{index}-{rng.randrange(10**9)}")
    conversation_id = await asyncio.to_thread(new_conversation, session, server.url)
    views: list[View] = []
    has_reply = False
    while time.monotonic() < deadline:
        view = View()
        views.append(view)
        async with open_socket(server.ws_url, conversation_id, session, server.url) as socket:
            regenerate = has_reply and rng.random() < 0.15
            params = {"max_new_tokens": rng.randint(8, 64), "temperature": rng.choice([0, 0.7])}
            if regenerate:
                tally.regenerates += 1
                await socket.send(json.dumps({"type": "regenerate", "params": params}))
            else:
                words = " ".join(rng.choice(["tell", "me", "about", "cats", "rain", "why", "code"]) for _ in range(5))
                await socket.send(json.dumps({"type": "send", "content": words, "params": params}))
            tally.turns += 1
            action = rng.choices(["read", "stop", "drop", "reload"], weights=[5, 2, 2, 1])[0]
            frame = {}
            while frame.get("type") not in ("token", "end", "error"):
                frame = await next_frame(socket, view)
            if frame["type"] == "error":
                tally.errors += 1  # busy while a reply of a killed worker was being reaped, say
                continue
            has_reply = True
            if action == "stop" and frame["type"] != "end":
                tally.stops += 1
                await socket.send(json.dumps({"type": "stop"}))
            if action in ("read", "stop") or frame["type"] == "end":
                while frame["type"] != "end":
                    frame = await next_frame(socket, view)
                continue
        # Dropped (or reloaded) mid-reply: a new socket resumes the reply.
        if action == "drop":
            tally.drops += 1
            await asyncio.sleep(rng.uniform(0.1, 1.0))
        else:
            tally.reloads += 1
        resumed = View()
        views.append(resumed)
        async with open_socket(server.ws_url, conversation_id, session, server.url) as socket:
            # A live reply resumes with `start` and its text so far; one that
            # ended meanwhile sends nothing.
            frame = await first_frame_or_none(socket)
            if frame is not None:
                resumed.take(frame)
                while frame["type"] != "end":
                    frame = await next_frame(socket, resumed)
    for view in views:
        for message_id, text in view.text.items():
            tally.seen.append((conversation_id, message_id, text, message_id in view.ended))
    user.sessions[conversation_id] = session  # type: ignore[attr-defined]


user.sessions = {}  # type: ignore[attr-defined]


async def first_frame_or_none(socket):
    try:
        return json.loads(await asyncio.wait_for(socket.recv(), timeout=RESUME_WAIT))
    except TimeoutError:
        return None


def compare(server, tally: Tally) -> tuple[int, int]:
    """(replies whose stored text differs from what a socket was sent, replies left streaming)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        stored = {}
        for conversation_id, session in user.sessions.items():  # type: ignore[attr-defined]
            for message in session.get(f"{server.url}/api/conversations/{conversation_id}/").json()["messages"]:
                stored[message["id"]] = message
        streaming = [m for m in stored.values() if m["status"] == "streaming"]
        if not streaming or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # replies settling in other processes
    differ = set()
    for _conversation_id, message_id, text, ended in tally.seen:
        message = stored.get(message_id)
        if message is None:
            continue  # replaced by a regenerate
        if (ended and message["content"] != text) or not message["content"].startswith(text):
            differ.add(message_id)
    return len(differ), len(streaming)


async def run_users(server, users: int, seconds: float, tally: Tally, seed: int) -> None:
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(user(server, i, deadline, tally, random.Random(seed + i)) for i in range(users)))


def worker(env: dict, folder: Path, name: str) -> subprocess.Popen:
    log = open(folder / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        [sys.executable, "manage.py", "inference_worker", "--name", name],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def tiny_model(folder: Path) -> str:
    from tests.inference_fixtures import build_tiny_model, default_model_tokenizer

    tokenizer = default_model_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def keep_logs(mode: str, server, worker_folder: Path | None) -> None:
    """A failed mode's server (and worker) logs stay on disk, named on stderr: the failure's only clue."""
    server.keep_workdir = True
    if worker_folder:
        for log in worker_folder.glob("*.log"):
            shutil.copy(log, server.workdir / log.name)
    sys.stderr.write(f"soak: {mode} mode failed; its logs are kept in {server.workdir}\n")


def soak(mode: str, args) -> str:
    tally = Tally()
    user.sessions = {}  # type: ignore[attr-defined]
    with ExitStack() as stack:
        env = {"CHAT_SHUTDOWN_GRACE_S": 5, "CHAT_DEVICE": "cpu"}
        if args.model == "tiny":
            env["CHAT_MODEL"] = tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-model-"))))
        workers: list[subprocess.Popen] = []
        if mode == "endpoint":
            from tests.endpoint_support import start_llama

            llama = start_llama()
            stack.callback(llama.stop)
            env = {"CHAT_SHUTDOWN_GRACE_S": 5, "CHAT_INFERENCE": "none", "CHAT_ENDPOINTS": f"llama={llama.url}"}
        if mode == "worker":
            env |= {
                "DATABASE_URL": stack.enter_context(postgres_server()),
                "REDIS_URL": stack.enter_context(redis_server()),
                "CHAT_INFERENCE": "worker",
                "CHAT_WORKER_TIMEOUT_S": WORKER_TIMEOUT_S,
            }
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            worker_env = server_env(folder, env)
            subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=worker_env, check=True)
            workers = [worker(worker_env, folder, f"w{i}") for i in range(2)]
            stack.callback(lambda: [w.send_signal(signal.SIGTERM) or w.wait(60) for w in workers])
        server = start_daphne(env, migrate=mode != "worker")
        stack.callback(server.stop)

        async def main() -> None:
            users = asyncio.create_task(run_users(server, args.users, args.minutes * 60, tally, args.seed))
            while mode == "worker" and not users.done():
                done, _ = await asyncio.wait({users}, timeout=args.kill_every)
                if done:
                    break
                victim = random.Random(tally.kills).randrange(len(workers))
                workers[victim].kill()
                workers[victim].wait()
                tally.kills += 1
                workers[victim] = worker(worker_env, folder, f"w{victim}-{tally.kills}")
            await users

        worker_folder = folder if mode == "worker" else None
        try:
            asyncio.run(main())
        except BaseException:
            keep_logs(mode, server, worker_folder)
            raise
        differ, streaming = compare(server, tally)
        if differ or streaming:
            keep_logs(mode, server, worker_folder)
    return (
        f"{mode}: {tally.turns} turns, {tally.stops} stops, {tally.drops} drops, {tally.reloads} reloads, "
        f"{tally.regenerates} regenerates, {tally.kills} kills, {tally.errors} refused; "
        f"{differ} replies differ, {streaming} left streaming"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="per mode (default 3)")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--modes", default="local,worker,endpoint")
    parser.add_argument("--kill-every", type=float, default=60.0, help="worker mode: seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", choices=("tiny", "default"), default="tiny")
    args = parser.parse_args(argv)
    lines = [soak(mode, args) for mode in args.modes.split(",")]
    print("\n".join(lines))
    return 0 if all(" 0 replies differ, 0 left streaming" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
