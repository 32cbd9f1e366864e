"""``python -m bench.api``: the OpenAI-compatible API against the WebSocket, on one real server.

Two phases on one daphne with the default model (greedy, same prompts, same
max_new_tokens, repetition_penalty 1 on both paths):

1. **One stream at a time**, API and WebSocket turns interleaved (the order
   alternates each round, so drift on a shared machine hits both alike): the
   median over rounds of the API's stream tokens/s over the WebSocket's
   (goal >= 0.95).
2. **8 mixed users** at once, 4 on the API and 4 on the WebSocket, a few turns
   each: per-kind stream tokens/s, TTFT and the aggregate.

Stream tokens/s is measured on the client as in bench.clients: (completion
tokens - 1) / (end - first text), the completion tokens from the server's
usage. Prints the figures and writes them to bench/results/api-<stamp>.json
(and api-latest.json).
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

import openai

from . import clients
from .server import Server, migrate, server_env

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 0.95


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved API/WebSocket pairs of phase 1")
    parser.add_argument("--tokens", type=int, default=128, help="max_new_tokens of every turn")
    parser.add_argument("--turns", type=int, default=2, help="turns per user in phase 2")
    parser.add_argument("--users", type=int, default=8, help="users in phase 2, half of them on the API")
    return parser.parse_args(argv)


def create_key(env: dict, username: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", username, "--name", "bench"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


async def api_turn(base: str, key: str, name: str, prompt: str, max_new_tokens: int) -> clients.Turn:
    """One streamed chat completion on a fresh connection, timed as clients.chat_turn times a WebSocket turn."""
    turn = clients.Turn(user=name)
    api = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=clients.TURN_TIMEOUT)
    model = (await api.models.list()).data[0].id  # the served model: a request must name one of them
    turn.sent_at = time.perf_counter()
    try:
        stream = await api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            top_p=1,
            max_tokens=max_new_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"repetition_penalty": 1},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if not turn.token_frames:
                    turn.first_at, turn.ttft_s = now, now - turn.sent_at
                turn.token_frames += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                turn.finish_reason = chunk.choices[0].finish_reason
            if chunk.usage:
                turn.end_at = now
                turn.completion_tokens = chunk.usage.completion_tokens
                turn.prompt_tokens = chunk.usage.prompt_tokens
        turn.ok = bool(turn.token_frames and turn.end_at)
        turn.error = "" if turn.ok else "no text or no usage"
    except openai.OpenAIError as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
    finally:
        await api.close()
    return turn


def rates(turns: list[clients.Turn]) -> list[float]:
    return [rate for turn in turns if (rate := turn.stream_tokens_per_s) is not None]


def solo_phase(web: clients.User, key: str, prompts: list[str], rounds: int, tokens: int) -> dict:
    """Phase 1: one stream at a time, the two kinds interleaved."""
    web_turns, api_turns = [], []
    for index in range(rounds):
        prompt = prompts[index % len(prompts)]
        conversation = web.new_conversation(tokens)
        first_api = index % 2 == 1
        for kind in ("api", "web") if first_api else ("web", "api"):
            if kind == "api":
                api_turns.append(asyncio.run(api_turn(web.base_url, key, "api", prompt, tokens)))
            else:
                web_turns.append(asyncio.run(clients.chat_turn(web, conversation, prompt, tokens)))
    api_rate, web_rate = statistics.median(rates(api_turns) or [0]), statistics.median(rates(web_turns) or [0])
    # Each round's two turns ran back to back: their ratio is the least exposed to drift.
    pairs = [
        a / w
        for a, w in zip(
            (t.stream_tokens_per_s for t in api_turns), (t.stream_tokens_per_s for t in web_turns), strict=True
        )
        if a and w
    ]
    return {
        "rounds": rounds,
        "api_stream_tokens_per_s": rates(api_turns),
        "web_stream_tokens_per_s": rates(web_turns),
        "api_median": api_rate,
        "web_median": web_rate,
        "pair_ratios": pairs,
        "ratio": statistics.median(pairs) if pairs else None,
        "goal": GOAL,
        "errors": [turn.error for turn in api_turns + web_turns if turn.error],
        "api_completion_tokens": [turn.completion_tokens for turn in api_turns],
        "web_completion_tokens": [turn.completion_tokens for turn in web_turns],
    }


def mixed_phase(web_users: list[clients.User], keys: list[str], base: str, prompts: list[str], args) -> dict:
    """Phase 2: API and WebSocket users at once."""
    plans = []
    for index, user in enumerate(web_users):
        conversations = [user.new_conversation(args.tokens) for _ in range(args.turns)]
        plans.append((user, conversations, [prompts[(index + t) % len(prompts)] for t in range(args.turns)]))

    async def api_user(index: int, key: str) -> list[clients.Turn]:
        offset = len(web_users) + index
        return [
            await api_turn(base, key, f"api-{index}", prompts[(offset + t) % len(prompts)], args.tokens)
            for t in range(args.turns)
        ]

    async def everyone():
        web = [clients.user_session(u, c, t, args.tokens) for u, c, t in plans]
        api = [api_user(index, key) for index, key in enumerate(keys)]
        results = await asyncio.gather(*web, *api)
        return results[: len(web)], results[len(web) :]

    web_per_user, api_per_user = asyncio.run(everyone())
    web_turns = [turn for turns in web_per_user for turn in turns]
    api_turns = [turn for turns in api_per_user for turn in turns]
    every = web_turns + api_turns
    wall = max(turn.end_at for turn in every if turn.end_at) - min(turn.sent_at for turn in every)
    return {
        "users": {"web": len(web_users), "api": len(keys)},
        "all": clients.summarize(every, wall),
        "web": clients.summarize(web_turns, wall),
        "api": clients.summarize(api_turns, wall),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prompts = [
        line.strip() for line in (Path(__file__).parent / "prompts.txt").read_text().splitlines() if line.strip()
    ]
    with tempfile.TemporaryDirectory(prefix="chatsite-bench-api-") as folder:
        env = server_env(f"sqlite:///{folder}/db.sqlite3", REPO / "var" / "models", max_batch=8)
        migrate(REPO, env)
        server = Server(REPO, env, Path(folder) / "server.log")
        try:
            server.start()
            half = args.users // 2
            web_users = [clients.User.sign_up(server.url, f"web{index}") for index in range(max(half, 1))]
            api_names = [f"api{index}" for index in range(args.users - half)]
            for name in api_names:
                clients.User.sign_up(server.url, name)
            keys = [create_key(env, name) for name in api_names]
            asyncio.run(api_turn(server.url, keys[0], "warm-up", prompts[0], 8))
            solo = solo_phase(web_users[0], keys[0], prompts, args.rounds, args.tokens)
            mixed = mixed_phase(web_users[:half], keys, server.url, prompts, args)
        finally:
            server.stop()
    results = {"when": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), "model": server.health, "solo": solo}
    results["mixed"] = mixed
    results["settings"] = {"tokens": args.tokens, "rounds": args.rounds, "turns": args.turns, "users": args.users}
    print_report(results)
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(results, indent=2)
    (RESULTS / f"api-{results['when']}.json").write_text(text)
    (RESULTS / "api-latest.json").write_text(text)
    return 0 if solo["ratio"] and not solo["errors"] and not mixed["all"]["errors"] else 1


def print_report(results: dict) -> None:
    solo, mixed = results["solo"], results["mixed"]
    print(f"model: {results['model'].get('model')} on {results['model'].get('device')}, {results['settings']}")
    print(
        f"one stream: API {solo['api_median']:.1f} tokens/s, WebSocket {solo['web_median']:.1f} tokens/s "
        f"(medians of {solo['rounds']} interleaved rounds); "
        f"API/WebSocket, median of the rounds' ratios: {solo['ratio'] or 0:.3f} (goal >= {GOAL})"
    )
    for kind in ("web", "api", "all"):
        row = mixed[kind]
        per_user = row["per_user_tokens_per_s"] or 0
        print(
            f"8 mixed users, {kind:>3}: {row['turns']} turns, {row['errors']} errors, "
            f"per-user {per_user:.1f} tokens/s, aggregate {row['aggregate_tokens_per_s']:.1f} tokens/s, "
            f"TTFT p50 {row['ttft_p50_s'] or 0:.2f} s"
        )
    errors = solo["errors"] + mixed["all"]["error_messages"]
    if errors:
        print("errors:", errors[:5])


if __name__ == "__main__":
    sys.exit(main())
