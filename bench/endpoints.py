"""Chatsite in front of llama.cpp's server, against clients streaming straight from it, in the same run.

    python -m bench.endpoints [--rounds 32] [--tokens 128]      (make bench-endpoints)

One llama.cpp server (llama-cpp-python's, the packaged GGUF, requests queued
rather than cut off) and a Chatsite with CHAT_INFERENCE=none in front of it:

1. the site's start: seconds to /healthz ok, and its idle RSS (no torch);
2. one user: greedy replies through Chatsite's WebSocket against the `openai`
   client streaming the same requests straight from the server, alternated
   round by round so a noisy machine hits both alike: stream tokens/s (each
   reply's tokens counted afterwards by the server's own tokenizer, the same
   way for both sides) and TTFT: each side's p50, and the median of the
   rounds' differences (Chatsite's turn less the direct one of the same
   round). llama.cpp's own time to a first token moves by hundreds of ms on a
   shared machine, far more than Chatsite adds; a round's two turns are seconds
   apart, so their difference cancels most of that;
3. 8 users at once, the same way, for 4 rounds (each side first in turn): aggregate
   tokens/s over all rounds (a round of each is a few seconds, so one round read
   anywhere from 0.95x to 1.04x from run to run), and each round's;
4. two replicas: a conversation's second turn on the replica that read its
   first turn (llama.cpp keeps that prompt) against the other replica: TTFT.

Prints the figures and writes them to bench/results/<time>-endpoints.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
import psutil
import requests

from bench import clients
from bench.report import write_results
from bench.server import Server, migrate, server_env
from tests.endpoint_support import start_llama

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2"
PROMPTS = [
    "Explain why the sky is blue.",
    "Write a short story about a lighthouse keeper.",
    "List five uses of a paperclip.",
    "Describe how a bicycle works.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=32, help="one-user rounds (each: Chatsite and direct)")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of every reply")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--user-rounds", type=int, default=4, help="rounds of all users at once (each side once)")
    return parser.parse_args(argv)


def count_tokens(llama_url: str, text: str) -> int:
    """The reply's tokens by the server's own tokenizer (what Chatsite counts with, where no usage comes)."""
    answer = requests.post(llama_url.removesuffix("/v1") + "/extras/tokenize", json={"input": text}, timeout=30)
    return len(answer.json()["tokens"])


async def direct_turn(
    llama_url: str, prompt: str, tokens: int, history: list[dict] | None = None
) -> tuple[clients.Turn, str]:
    """One streamed request straight to the server, timed as clients.chat_turn times a socket turn; and its text."""
    turn = clients.Turn(user="direct")
    api = openai.AsyncOpenAI(base_url=llama_url, api_key="none", max_retries=0, timeout=clients.TURN_TIMEOUT)
    messages = (history or []) + [{"role": "user", "content": prompt}]
    parts: list[str] = []
    turn.sent_at = time.perf_counter()
    stream = await api.chat.completions.create(
        model=MODEL, messages=messages, stream=True, max_tokens=tokens, temperature=0, top_p=1
    )
    async with stream:
        async for chunk in stream:
            text = chunk.choices[0].delta.content if chunk.choices else None
            if text:
                now = time.perf_counter()
                if not parts:
                    turn.first_at, turn.ttft_s = now, now - turn.sent_at
                parts.append(text)
    turn.end_at = time.perf_counter()
    turn.text, turn.token_frames, turn.ok = "".join(parts), len(parts), bool(parts)
    await api.close()
    return turn, turn.text


def counted(llama_url: str, turns: list[clients.Turn]) -> list[clients.Turn]:
    """Each reply's tokens by the server's tokenizer, asked once the server is idle (it queues tokenizing too)."""
    for turn in turns:
        turn.completion_tokens = count_tokens(llama_url, turn.text)
    return turns


def compare(site: Server, llama_url: str, user: clients.User, args) -> dict:
    """One user, alternating Chatsite and direct round by round."""
    through: list[clients.Turn] = []
    direct: list[clients.Turn] = []
    for round_ in range(args.rounds):
        # A prompt of its own for each side (llama.cpp keeps the last prompt it read), each side first in turn.
        prompt = PROMPTS[round_ % len(PROMPTS)]
        conversation = user.new_conversation(args.tokens)
        for side in ("chatsite", "direct") if round_ % 2 == 0 else ("direct", "chatsite"):
            text = clients.numbered(prompt)
            if side == "chatsite":
                through.append(asyncio.run(clients.chat_turn(user, conversation, text, args.tokens, model=MODEL)))
            else:
                direct.append(asyncio.run(direct_turn(llama_url, text, args.tokens))[0])
    paired = [c.ttft_s - d.ttft_s for c, d in zip(through, direct, strict=True) if c.ok and d.ok]
    return {
        "chatsite": figures(counted(llama_url, through)),
        "direct": figures(counted(llama_url, direct)),
        "ttft_paired_median_ms": 1000 * statistics.median(paired) if paired else None,
    }


def figures(turns: list[clients.Turn]) -> dict:
    good = [t for t in turns if t.ok]
    rates = [rate for t in good if (rate := t.stream_tokens_per_s) is not None]
    return {
        "turns": len(turns),
        "errors": sorted({t.error for t in turns if t.error}),
        "stream_tokens_per_s": statistics.median(rates) if rates else None,
        "ttft_p50_ms": 1000 * statistics.median(t.ttft_s for t in good) if good else None,
    }


def many(llama_url: str, users: list[clients.User], args) -> dict:
    """`args.users` at once through Chatsite, then as many direct clients, for `args.user_rounds` rounds
    (each side first in turn, as for one user): aggregate tokens/s over all rounds, and each round's."""

    # A new chat each round (made before the clock starts), so Chatsite's prompts are the direct ones.
    chats = [[user.new_conversation(args.tokens) for user in users] for _ in range(args.user_rounds)]

    async def through(prompts: list[str], conversations: list[str]) -> list[clients.Turn]:
        return await asyncio.gather(
            *(
                clients.chat_turn(u, c, p, args.tokens, model=MODEL)
                for u, c, p in zip(users, conversations, prompts, strict=True)
            )
        )

    async def direct(prompts: list[str], _: list[str]) -> list[clients.Turn]:
        answers = await asyncio.gather(*(direct_turn(llama_url, p, args.tokens) for p in prompts))
        return [turn for turn, _ in answers]

    tokens = {"chatsite": 0, "direct": 0}
    walls = {"chatsite": 0.0, "direct": 0.0}
    rounds = []
    for round_ in range(args.user_rounds):
        sides = (("chatsite", through), ("direct", direct))
        rates = {}
        for name, run in sides if round_ % 2 == 0 else sides[::-1]:
            prompts = [clients.numbered(PROMPTS[i % len(PROMPTS)]) for i in range(len(users))]
            started = time.perf_counter()
            turns = asyncio.run(run(prompts, chats[round_]))
            wall = time.perf_counter() - started
            summary = clients.summarize(counted(llama_url, turns), wall)
            tokens[name] += summary["completion_tokens"]
            walls[name] += wall
            rates[name] = summary["aggregate_tokens_per_s"]
        rounds.append(rates)
    return {name: tokens[name] / walls[name] for name in tokens} | {"rounds": rounds}


def replicas(args) -> dict:
    """A second turn on the replica that read the first against the other one: TTFT (ms)."""
    first, second = start_llama(), start_llama()
    try:
        same, other = [], []
        for n in range(args.rounds):
            prompt = clients.numbered(PROMPTS[n % len(PROMPTS)] + " " + "Give many details. " * 20)
            _, reply = asyncio.run(direct_turn(first.url, prompt, 48))
            history = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
            follow = "Now say that in one sentence."
            # Each pair asks the same second turn of both replicas, the other one first.
            other.append(asyncio.run(direct_turn(second.url, follow, 8, history))[0].ttft_s)
            same.append(asyncio.run(direct_turn(first.url, follow, 8, history))[0].ttft_s)
        return {
            "same_replica_ttft_ms": 1000 * statistics.median(same),
            "other_replica_ttft_ms": 1000 * statistics.median(other),
        }
    finally:
        first.stop()
        second.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    llama = start_llama()
    workdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-endpoints-"))
    env = server_env(f"sqlite:///{workdir / 'db.sqlite3'}", REPO / "var" / "models", max_batch=8)
    env |= {"CHAT_INFERENCE": "none", "CHAT_ENDPOINTS": f"llama={llama.url}"}
    migrate(REPO, env)
    results: dict = {"args": vars(args)}
    try:
        with Server(REPO, env, workdir / "server.log") as site:
            results["none_start_s"] = site.start()
            time.sleep(2.0)  # idle: what a site of endpoints holds with nothing to do
            results["none_idle_rss_mb"] = psutil.Process(site.process.pid).memory_info().rss / 2**20
            users = [clients.User.sign_up(site.url, f"bench-{n}") for n in range(args.users)]
            asyncio.run(direct_turn(llama.url, "Hello", 8))  # the server's first request loads its caches
            results["one_user"] = compare(site, llama.url, users[0], args)
            results["users"] = many(llama.url, users, args)
    finally:
        llama.stop()
    results["replicas"] = replicas(args)
    report(results)
    write_results(REPO, "endpoints", results)
    return 0


def report(results: dict) -> None:
    one = results["one_user"]
    rate = one["chatsite"]["stream_tokens_per_s"] / one["direct"]["stream_tokens_per_s"]
    ttft = one["chatsite"]["ttft_p50_ms"] - one["direct"]["ttft_p50_ms"]
    users = results["users"]
    print(
        f"CHAT_INFERENCE=none: /healthz ok in {results['none_start_s']:.1f} s, "
        f"idle RSS {results['none_idle_rss_mb']:.0f} MB"
    )
    print(
        f"one user: {one['chatsite']['stream_tokens_per_s']:.1f} tokens/s through Chatsite, "
        f"{one['direct']['stream_tokens_per_s']:.1f} direct ({rate:.2f}x); TTFT p50 "
        f"{one['chatsite']['ttft_p50_ms']:.0f} against {one['direct']['ttft_p50_ms']:.0f} ms ({ttft:+.0f} ms), "
        f"median of the rounds' differences {one['ttft_paired_median_ms']:+.0f} ms"
    )
    print(
        f"{results['args']['users']} users: {users['chatsite']:.1f} tokens/s through Chatsite, "
        f"{users['direct']:.1f} direct ({users['chatsite'] / users['direct']:.2f}x); rounds "
        + ", ".join(f"{r['chatsite'] / r['direct']:.2f}x" for r in users["rounds"])
    )
    rep = results["replicas"]
    print(
        f"second turn: TTFT {rep['same_replica_ttft_ms']:.0f} ms on the replica that read the first, "
        f"{rep['other_replica_ttft_ms']:.0f} ms on the other"
    )


if __name__ == "__main__":
    sys.exit(main())
