#!/usr/bin/env python
"""Time one chat in embedded mode and in worker mode, with the real default model, in one run.

    .venv/bin/python scripts/compare_modes.py [--tokens 128] [--runs 3]

Starts its own PostgreSQL and Redis (scripts.services), one daphne per mode
(and one inference worker for worker mode), sends the same greedy prompt
over a real WebSocket and reports, per mode, the median over the runs of
time to first token as the browser sees it (send -> first token frame) and
tokens per second (completion tokens over first token -> end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.services import postgres_server, redis_server  # noqa: E402
from tests.clients import new_conversation, open_socket, sign_up  # noqa: E402
from tests.live_server import server_env, start_daphne  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."


async def one_chat(server, session, tokens: int) -> tuple[float, float]:
    conversation_id = new_conversation(session, server.url)
    async with open_socket(server.ws_url, conversation_id, session, server.url) as socket:
        sent = time.perf_counter()
        await socket.send(
            json.dumps({"type": "send", "content": PROMPT, "params": {"temperature": 0, "max_new_tokens": tokens}})
        )
        first = None
        while True:
            frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=300))
            if frame["type"] == "token" and first is None:
                first = time.perf_counter()
            if frame["type"] in ("end", "error"):
                break
        done = time.perf_counter()
    if frame["type"] == "error":
        raise RuntimeError(frame)
    return (first - sent) * 1000, frame["usage"]["completion_tokens"] / (done - first)


def measure(server, name: str, tokens: int, runs: int) -> dict:
    session = sign_up(server.url, f"bench-{name}-{int(time.time())}")
    asyncio.run(one_chat(server, session, 8))  # warm-up
    results = [asyncio.run(one_chat(server, session, tokens)) for _ in range(runs)]
    return {
        "mode": name,
        "ttft_ms": round(statistics.median(r[0] for r in results)),
        "tokens_per_s": round(statistics.median(r[1] for r in results), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with postgres_server() as database_url, redis_server() as redis_url:
        rows = []
        with start_daphne({"DATABASE_URL": database_url}) as server:
            rows.append(measure(server, "embedded", args.tokens, args.runs))
        shared = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHAT_INFERENCE": "worker"}
        with tempfile.TemporaryDirectory() as folder:
            env = server_env(Path(folder), shared)
            worker = subprocess.Popen(
                [sys.executable, "manage.py", "inference_worker"],
                cwd=REPO,
                env=env,
                stdout=open(Path(folder) / "worker.log", "wb"),
                stderr=subprocess.STDOUT,
            )
            try:
                with start_daphne(shared, migrate=False) as server:
                    rows.append(measure(server, "worker", args.tokens, args.runs))
            finally:
                worker.terminate()
                worker.wait(60)
    for row in rows:
        print(f"{row['mode']:>9}: time to first token {row['ttft_ms']} ms, {row['tokens_per_s']} tokens/s")


if __name__ == "__main__":
    main()
