"""Where one user's stream loses speed between the model and the WebSocket (optional, a few minutes).

``python -m bench.breakdown [--rounds N] [--new-tokens N] [--threads 1,2] [--skip-ws] [--baseline-repo DIR]``
times one greedy reply of the default model, batch 1, by the wall clock, on
each layer of the served path, interleaved round by round so that every
variant sees the same load on a shared machine:

* ``generate``: ``model.generate`` (the raw baseline of ``python -m bench``),
  torch's default threads;
* ``… auto``: the engine's default thread choice (``num_threads`` 0, see
  ``inference/threads.py``);
* ``step tN``: a bare loop of the lean decoding step (``inference/lean.py``)
  plus argmax, on a fresh thread with N torch threads: the model alone;
* ``engine tN``: ``Engine.stream`` in an asyncio loop (``num_threads`` N): adds
  the scheduler thread, sampling, the detokenizer and the hand-off of every
  token to the event loop;
* ``ws tN``: a real daphne (``CHAT_THREADS`` N) and a WebSocket client
  (``bench/clients.py``): adds Django, Channels, the coalescing and the socket;
* ``ws-baseline tN`` (with ``--baseline-repo``): the same from another checkout
  of Chatsite (e.g. ``git archive <commit> | tar -x -C DIR``), for a before/after
  of the served path in the same run;
* with ``--burst N``, each round also sends N users' first turns at once to
  each server: TTFT p50/p95 (the client's, and the engine's own from the
  `end` frame) and the aggregate tokens/s.

Every figure is (tokens - 1) / (last token - first token), as in the
benchmark. Prints medians with the range over rounds and the ratios between
layers, and writes ``bench/results/breakdown-<stamp>.json``.

In-process variants at more than one thread understate what the server
gets: ``generate`` runs on the main thread at torch's default count and each
engine's scheduler keeps its own OpenMP team, and libgomp, counting more
threads than cores, stops its workers spinning (see inference/threads.py).
The ``ws`` variants, each a server process of its own, are not affected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import clients, raw
from .server import Server, migrate, server_env

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per reply (default 128)")
    parser.add_argument(
        "--threads", default="0,1,2", help="torch thread counts to compare, 0 = the engine's auto (default 0,1,2)"
    )
    parser.add_argument("--skip-ws", action="store_true", help="no daphne servers, in-process layers only")
    parser.add_argument(
        "--burst", type=int, default=0, help="also N WebSocket users at once on each server: TTFT and aggregate"
    )
    parser.add_argument("--baseline-repo", type=Path, help="another Chatsite checkout to serve as ws-baseline")
    args = parser.parse_args(argv)
    args.threads = [int(value) for value in args.threads.split(",")]
    return args


def label(threads: int) -> str:
    return f"t{threads}" if threads else "auto"


def on_thread(function: Callable[[], float]) -> float:
    """``function()`` on a fresh thread, as the scheduler runs (torch's thread count is per thread)."""
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join()
    return result[0]


def step_rate(model, lean, ids: list[int], new_tokens: int, threads: int) -> float:
    """Tokens/s of a bare lean-step loop (argmax, one token a step) after a prefill."""
    from transformers import DynamicCache

    torch.set_num_threads(threads)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        output = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = output.logits[:, -1].argmax(-1, keepdim=True)
        position = torch.tensor([[len(ids)]])
        started = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = lean.step(token, position, cache, None).argmax(-1, keepdim=True)
            int(token)  # the scheduler reads every token back too
            position = position + 1
        return (new_tokens - 1) / (time.perf_counter() - started)


async def engine_rate(engine, prompt: str, new_tokens: int) -> float:
    """Tokens/s of one streamed reply, seen by the async reader."""
    from inference import Chunk, Finished, GenerationParams, Request

    params = GenerationParams(temperature=0, top_p=1, repetition_penalty=1, max_new_tokens=new_tokens)
    first = last = 0.0
    tokens = 0
    async for event in engine.stream(Request(messages=[{"role": "user", "content": prompt}], params=params)):
        now = time.perf_counter()
        if isinstance(event, Chunk):
            first, last = first or now, now
        elif isinstance(event, Finished):
            tokens = event.result.completion_tokens
    return (tokens - 1) / (last - first) if last > first else 0.0


def ws_rate(user: clients.User, prompt: str, new_tokens: int) -> float:
    turn = asyncio.run(clients.chat_turn(user, user.new_conversation(new_tokens), prompt, new_tokens))
    if not turn.ok:
        raise RuntimeError(f"a WebSocket turn failed: {turn.error}")
    return turn.stream_tokens_per_s or 0.0


def burst(users: list[clients.User], prompts: list[str], new_tokens: int) -> dict:
    """``len(users)`` users sending at once, one turn each: the client's TTFT and the aggregate rate.

    ``engine_ttft`` is the engine's own (submission to first token, from the
    `end` frame): the rest of the client's TTFT is the turn's database work,
    the prompt's rendering and the socket.
    """
    summary, turns = clients.run_level(users, prompts, 1, new_tokens)
    if summary["errors"]:
        raise RuntimeError(f"burst turns failed: {summary['error_messages']}")
    engine = [turn.server_timing.get("ttft_ms", 0) / 1000 for turn in turns]
    return {
        "aggregate": summary["aggregate_tokens_per_s"],
        "ttft_p50": summary["ttft_p50_s"],
        "ttft_p95": summary["ttft_p95_s"],
        "engine_ttft_p95": clients.percentile(engine, 95),
        "ttfts": sorted(round(turn.ttft_s, 3) for turn in turns),
    }


def start_server(
    stack: ExitStack, repo: Path, workdir: Path, name: str, threads: int, users: int = 1
) -> list[clients.User]:
    """A daphne from ``repo`` serving the default model with ``CHAT_THREADS=threads``; returns signed-up users."""
    env = server_env(f"sqlite:///{workdir / name}.sqlite3", REPO / "var" / "models", 16)
    env["CHAT_THREADS"] = str(threads)
    migrate(repo, env)
    # The pages' static files are hashed at collectstatic (the sign-up page needs them).
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"], cwd=repo, env=env, check=True
    )
    server = stack.enter_context(Server(repo, env, workdir / f"{name}.log"))
    print(f"[breakdown] {name}: started in {server.start():.1f} s", flush=True)
    return [clients.User.sign_up(server.url, f"breakdown-{index}") for index in range(users)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from inference import EngineConfig, build_engine

    prompts = [line.strip() for line in (REPO / "bench" / "prompts.txt").read_text().splitlines() if line.strip()]
    prompt = prompts[0]
    loaded = raw.load(REPO / "var" / "models")
    cores = torch.get_num_threads()
    engines = {
        n: build_engine(loaded.model, loaded.tokenizer, EngineConfig(num_threads=n), quant=loaded.quant)
        for n in args.threads
    }
    lean = next(iter(engines.values())).scheduler.lean
    ids = raw.chat_ids(loaded.tokenizer, prompt)
    n = args.new_tokens

    def generate() -> float:
        torch.set_num_threads(cores)
        return raw.generate_run(loaded, [ids], n)["per_row_decode_tokens_per_s"]

    variants: dict[str, Callable[[], float]] = {"generate": generate}
    for threads in args.threads:
        if threads:
            variants[f"step {label(threads)}"] = lambda t=threads: on_thread(
                lambda: step_rate(loaded.model, lean, ids, n, t)
            )
        variants[f"engine {label(threads)}"] = lambda t=threads: asyncio.run(engine_rate(engines[t], prompt, n))
    rates: dict[str, list[float]] = {}
    bursts: dict[str, Callable[[], dict]] = {}
    burst_results: dict[str, list[dict]] = {}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="chatsite-breakdown-") as work:
        if not args.skip_ws:
            repos = {"ws": REPO} | ({"ws-baseline": args.baseline_repo.resolve()} if args.baseline_repo else {})
            for layer, repo in repos.items():
                for threads in args.threads:
                    name = f"{layer} {label(threads)}"
                    users = start_server(stack, repo, Path(work), name.replace(" ", "-"), threads, max(args.burst, 1))
                    variants[name] = lambda u=users[0]: ws_rate(u, prompt, n)
                    if args.burst:
                        bursts[f"{name} x{args.burst}"] = lambda u=users: burst(u, prompts, n)
        load_start = os.getloadavg()
        for round_ in range(args.rounds):
            for name, variant in variants.items():
                rates.setdefault(name, []).append(variant())
            print(f"[breakdown] round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()))
            for name, run_burst in bursts.items():
                burst_results.setdefault(name, []).append(run_burst())
                print(f"[breakdown] {name}: {burst_results[name][-1]}", flush=True)
    for engine in engines.values():
        engine.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print_table(rates, medians)
    for name, runs in burst_results.items():
        print(
            f"{name:<24} aggregate {statistics.median(r['aggregate'] for r in runs):6.1f} tokens/s, TTFT p95 "
            f"{statistics.median(r['ttft_p95'] for r in runs):.2f} s (engine's own "
            f"{statistics.median(r['engine_ttft_p95'] for r in runs):.2f} s), median of {len(runs)}"
        )
    result = {
        "stamp": stamp,
        "prompt_tokens": len(ids),
        "new_tokens": n,
        "cores": cores,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rates": rates,
        "medians": medians,
        "bursts": burst_results,
        "baseline_repo": str(args.baseline_repo) if args.baseline_repo else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"breakdown-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[breakdown] load average {result['load_average_start']} -> {result['load_average_end']}; {path}")
    return 0


def print_table(rates: dict[str, list[float]], medians: dict[str, float]) -> None:
    reference = medians["generate"]
    print(f"{'layer':<18}{'tokens/s':>10}{'range':>16}{'vs generate':>13}{'ms/token':>10}")
    for name, values in rates.items():
        median = medians[name]
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{name:<18}{median:>10.1f}{spread:>16}{median / reference:>12.2f}x{1000 / median:>10.1f}")


if __name__ == "__main__":
    sys.exit(main())
