"""80 simultaneous sends on SQLite, one socket each: with and without IMMEDIATE transactions.

    python -m bench.sends [--sockets 80] [--rounds 3]

Runs a daphne (tiny model, local mode, SQLite) per variant and round,
interleaved: `immediate` is chatsite.settings as they are; `deferred` is the
same with Django's default transaction mode (a settings module made for the
run). Prints per variant: sockets closed by the server, error codes
received, and user messages stored out of those sent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

import websockets

from bench.soak import tiny_model
from tests.clients import new_conversation, open_socket, sign_up
from tests.live_server import start_daphne

DEFERRED = """from chatsite.settings import *  # noqa
DATABASES["default"]["OPTIONS"].pop("transaction_mode", None)
"""


async def one(server, session, conversation_id: str, start: asyncio.Event, outcome: collections.Counter) -> None:
    try:
        async with open_socket(server.ws_url, conversation_id, session, server.url) as socket:
            await start.wait()
            await socket.send(json.dumps({"type": "send", "content": "Hello", "params": {"max_new_tokens": 4}}))
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=300))
                if frame["type"] == "error":
                    outcome[f"error {frame['code']}"] += 1
                if frame["type"] == "end":
                    outcome["end"] += 1
                    return
                if frame["type"] == "error" and frame["code"] in ("busy", "invalid"):
                    return
    except websockets.exceptions.ConnectionClosed as exc:
        outcome[f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}"] += 1


def run(variant: str, sockets: int, model: str, pythonpath: str) -> collections.Counter:
    env = {"CHAT_MODEL": model, "CHAT_DEVICE": "cpu", "CHAT_MAX_QUEUE": 200}
    if variant == "deferred":
        env |= {"DJANGO_SETTINGS_MODULE": "deferred_settings", "PYTHONPATH": pythonpath}
    with start_daphne(env) as server:
        session = sign_up(server.url, "sender")
        conversations = [new_conversation(session, server.url) for _ in range(sockets)]
        outcome: collections.Counter = collections.Counter()

        async def all_at_once() -> None:
            start = asyncio.Event()
            tasks = [asyncio.create_task(one(server, session, c, start, outcome)) for c in conversations]
            await asyncio.sleep(2)  # let every socket connect before the sends go out together
            start.set()
            await asyncio.gather(*tasks)

        asyncio.run(all_at_once())
        with sqlite3.connect(server.workdir / "db.sqlite3") as db:
            outcome["user messages stored"] = db.execute(
                "SELECT count(*) FROM conversations_message WHERE role = 'user'"
            ).fetchone()[0]
    return outcome


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sends-") as folder:
        Path(folder, "deferred_settings.py").write_text(DEFERRED)
        model = tiny_model(Path(folder, "model"))
        pythonpath = os.pathsep.join([folder, os.getcwd()])
        for round_ in range(args.rounds):
            for variant in ("deferred", "immediate"):
                outcome = run(variant, args.sockets, model, pythonpath)
                print(f"round {round_ + 1} {variant:>9}: {dict(sorted(outcome.items()))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
