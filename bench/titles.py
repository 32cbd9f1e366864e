"""What titles written by the model cost the users' replies: 8 users on the real default model, with
CHAT_TITLES off and on, in the same run.

    python -m bench.titles [--rounds 2] [--users 8] [--turns 2] [--tokens 128]      (make bench-titles)

Every turn is the first of a new chat, so every reply asks for a title: the
most titles a site can be asked for. Each round starts a server with titles
off and one with titles on (the order alternating round by round, so a noisy
machine hits both alike), and runs the users' turns on each: aggregate
tokens/s of the replies (titles not counted), and how many titles the model
wrote, and how long after the last reply the last title was stored. The
target is a cost under 5% of the aggregate (docs/history.md, "Titles").

Prints the figures and writes them to bench/results/<time>-titles.json.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from bench import clients, report
from bench.server import Server, migrate, server_env

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [line.strip() for line in (REPO / "bench" / "prompts.txt").read_text().splitlines() if line.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each with titles off and on")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2, help="turns (new chats) per user and setting")
    parser.add_argument("--tokens", type=int, default=128, help="max_new_tokens of every reply")
    return parser.parse_args(argv)


def titled(database: Path) -> int:
    with closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT count(*) FROM conversations_conversation WHERE title_source = 'model'").fetchone()[0]


def one_level(env: dict, titles_on: bool, database: Path, workdir: Path, args, serial: int) -> dict:
    """A server with CHAT_TITLES as given, its users' turns, and the titles written while they ran."""
    before = titled(database)
    with Server(REPO, env | {"CHAT_TITLES": "1" if titles_on else "0"}, workdir / "server.log") as site:
        site.start()
        users = [clients.User.sign_up(site.url, f"bench-{serial}-{n}") for n in range(args.users)]
        summary, _ = clients.run_level(users, PROMPTS, args.turns, args.tokens)
        ended = time.monotonic()
        # Titles run while no reply does: under this load, mostly after the last one. Polled: they are
        # rows of the server's database, and nothing else says when they are written.
        while titles_on and titled(database) - before < summary["turns"] and time.monotonic() - ended < 120:
            time.sleep(0.2)
        titles_after_s = time.monotonic() - ended
    return {
        "titles_on": titles_on,
        "aggregate_tokens_per_s": summary["aggregate_tokens_per_s"],
        "ttft_p50_s": summary["ttft_p50_s"],
        "errors": summary["errors"],
        "replies": summary["turns"],
        "titles_written": titled(database) - before,
        "titles_done_after_last_reply_s": titles_after_s if titles_on else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-titles-"))
    database = workdir / "db.sqlite3"
    env = server_env(f"sqlite:///{database}", REPO / "var" / "models", max_batch=8)
    migrate(REPO, env)
    runs = []
    for round_ in range(args.rounds):
        for titles_on in (False, True) if round_ % 2 == 0 else (True, False):
            runs.append(one_level(env, titles_on, database, workdir, args, len(runs)))
            print(json.dumps(runs[-1]))
    off = statistics.median(r["aggregate_tokens_per_s"] for r in runs if not r["titles_on"])
    on = statistics.median(r["aggregate_tokens_per_s"] for r in runs if r["titles_on"])
    results = {"args": vars(args), "runs": runs, "off_tokens_per_s": off, "on_tokens_per_s": on, "cost": 1 - on / off}
    print(
        f"{args.users} users, every turn a new chat: {off:.1f} tokens/s with titles off, {on:.1f} on "
        f"(cost {100 * results['cost']:+.1f}%); titles written: "
        f"{sum(r['titles_written'] for r in runs if r['titles_on'])} of "
        f"{sum(r['replies'] for r in runs if r['titles_on'])} replies"
    )
    report.write_results(REPO, "titles", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
