"""What a summary costs the turn that triggers it: time to first token on the real default model, whose
context is 8192 tokens, in a chat that has just outgrown it.

    python -m bench.summaries [--rounds 2] [--tokens 64]      (make bench-summaries)

Each round imports the same long chat twice (about 9,000 tokens of a user's
notes and short replies, its first message a fact), then sends one more
message to each, over the WebSocket, on a server with CHAT_SUMMARIES on and
one with it off, in the same run (the order alternating round by round):

- on: the turn that triggers the summary (the model summarises the oldest
  turns, then answers), then the next turn (which reads the stored summary);
- off: the same turn, the engine leaving the oldest turns out instead.

Prints the figures and writes them to bench/results/<time>-summaries.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench import clients, report
from bench.server import Server, migrate, server_env

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [line.strip() for line in (REPO / "bench" / "prompts.txt").read_text().splitlines() if line.strip()]
FACT = "Please remember that my sister's name is Oriel."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each with summaries on and off")
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens of the measured turns")
    return parser.parse_args(argv)


def long_chat() -> dict:
    """An export (docs/history.md, "Import") of about 9,000 tokens: the fact, then notes and short replies."""
    messages = [{"role": "user", "content": FACT}, {"role": "assistant", "content": "I will remember that."}]
    for n in range(48):
        notes = " ".join(PROMPTS[(n + k) % len(PROMPTS)] for k in range(12))
        messages += [{"role": "user", "content": f"Note {n}: {notes}"}, {"role": "assistant", "content": "Noted."}]
    return {"title": "A long chat", "messages": messages}


def import_chat(user: clients.User) -> str:
    session = user.session
    upload = {"file": ("chat.json", json.dumps(long_chat()), "application/json")}
    response = session.post(
        f"{user.base_url}/c/import/",
        files=upload,
        headers={
            "X-CSRFToken": session.cookies.get("csrftoken", ""),
            "Referer": f"{user.base_url}/",
            "Accept": "application/json",
        },
        timeout=120,
    )
    response.raise_for_status()
    return response.json()["conversations"][0]["id"]


def one_setting(env: dict, summaries_on: bool, workdir: Path, args, serial: int) -> dict:
    with Server(REPO, env | {"CHAT_SUMMARIES": "1" if summaries_on else "0"}, workdir / "server.log") as site:
        site.start()
        user = clients.User.sign_up(site.url, f"bench-{serial}")
        chat = import_chat(user)
        first = asyncio.run(clients.chat_turn(user, chat, "What is my sister's name?", args.tokens))
        second = asyncio.run(clients.chat_turn(user, chat, "And what was my first note about?", args.tokens))
    for turn in (first, second):
        if not turn.ok:
            raise RuntimeError(f"a turn failed: {turn.error}")
    return {
        "summaries_on": summaries_on,
        "trigger_ttft_s": round(first.ttft_s, 3),
        "trigger_prompt_tokens": first.prompt_tokens,
        "next_ttft_s": round(second.ttft_s, 3),
        "next_prompt_tokens": second.prompt_tokens,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-summaries-"))
    env = server_env(f"sqlite:///{workdir / 'db.sqlite3'}", REPO / "var" / "models", max_batch=8)
    migrate(REPO, env)
    runs = []
    for round_ in range(args.rounds):
        for summaries_on in (True, False) if round_ % 2 == 0 else (False, True):
            runs.append(one_setting(env, summaries_on, workdir, args, len(runs)))
            print(json.dumps(runs[-1]))

    def median(key: str, on: bool) -> float:
        return statistics.median(r[key] for r in runs if r["summaries_on"] is on)

    results = {
        "args": vars(args),
        "runs": runs,
        "trigger_ttft_on_s": median("trigger_ttft_s", True),
        "trigger_ttft_off_s": median("trigger_ttft_s", False),
        "next_ttft_on_s": median("next_ttft_s", True),
        "next_ttft_off_s": median("next_ttft_s", False),
    }
    print(
        f"the turn that triggers a summary: TTFT {results['trigger_ttft_on_s']:.2f} s "
        f"(trimmed instead: {results['trigger_ttft_off_s']:.2f} s); the turn after it: "
        f"{results['next_ttft_on_s']:.2f} s ({results['next_ttft_off_s']:.2f} s)"
    )
    report.write_results(REPO, "summaries", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
