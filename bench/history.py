"""The conversation list at scale: ``python -m bench.history``.

Two rows (issue 14), each on SQLite and on a throwaway PostgreSQL
(scripts/services.py):

- search: ``GET /api/conversations/?q=...`` latency p50 / p95 for one user
  with 10,000 conversations and 200,000 messages (goal on PostgreSQL: p95 <=
  100 ms);
- the chat page: time and size of ``GET /`` for users with 100, 1,000 and
  10,000 conversations (goal: <= 50 ms and <= 200 KB at 10,000);
- and, on SQLite, importing a 50 MB ChatGPT ``conversations.json``: time and
  how much the process's peak memory grew.

Each backend runs in a child process of its own (Django settings come from
the environment), through Django's test client: the whole view, middleware
and session included, no network. Numbers go to
``bench/results/history-<stamp>.json`` and ``history-latest.json``/``.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

SEARCH_CONVERSATIONS = 10_000
MESSAGES_EACH = 20
PAGE_SIZES = (100, 1_000, 10_000)
VOCABULARY = 6_000
SYLLABLES = [consonant + vowel for consonant in "bdklmnrstvz" for vowel in "aeiou"]


def words(rng: random.Random) -> list[str]:
    """A made-up vocabulary, so word frequencies follow Zipf's law as in real text."""
    vocabulary: dict[str, None] = {}
    while len(vocabulary) < VOCABULARY:
        vocabulary["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))] = None
    return list(vocabulary)


def text(rng: random.Random, vocabulary: list[str], weights: list[float], length: int) -> str:
    return " ".join(rng.choices(vocabulary, weights, k=length)).capitalize() + "."


KINDS = ("common word", "middling word", "rare word", "middling + common", "two middling", "word beginning")


def queries(rng: random.Random, vocabulary: list[str], count: int) -> list[str]:
    """Common, middling and rare words, pairs of them, and word beginnings (as typed)."""
    common, middling, rare = vocabulary[5:60], vocabulary[200:1500], vocabulary[2000:]
    kinds = [
        lambda: rng.choice(common),
        lambda: rng.choice(middling),
        lambda: rng.choice(rare),
        lambda: f"{rng.choice(middling)} {rng.choice(common)}",
        lambda: f"{rng.choice(middling)} {rng.choice(middling)}",
        lambda: rng.choice([w for w in middling if len(w) >= 6])[:4],
    ]
    return [kinds[i % len(kinds)]() for i in range(count)]


# The child: one backend.


def child(backend: str, rounds: int) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    rng = random.Random(14)
    vocabulary = words(rng)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    heavy = populate("heavy", SEARCH_CONVERSATIONS, MESSAGES_EACH, rng, vocabulary, weights)
    client = Client()
    client.force_login(heavy)
    result = {
        "backend": backend,
        "conversations": SEARCH_CONVERSATIONS,
        "messages": SEARCH_CONVERSATIONS * MESSAGES_EACH,
    }
    result["search"] = search_latency(client, queries(rng, vocabulary, rounds))
    result["page"] = []
    for size in PAGE_SIZES:
        if size == SEARCH_CONVERSATIONS:
            user = heavy
        else:
            user = populate(f"user{size}", size, 2, rng, vocabulary, weights)
        result["page"].append(dict(chat_page(user), conversations=size))
    return result


def populate(username: str, conversations: int, messages_each: int, rng, vocabulary, weights):
    """A user with `conversations` chats of `messages_each` short messages, in bulk."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from conversations.models import Conversation, Message

    user = get_user_model().objects.create_user(username, password="bench-" + username)
    start = datetime.now(UTC) - timedelta(days=365)
    began = time.perf_counter()
    for first in range(0, conversations, 1000):
        with transaction.atomic():
            batch = [
                Conversation(
                    user=user,
                    title=text(rng, vocabulary, weights, rng.randint(2, 6)),
                    created_at=start + timedelta(minutes=n),
                    updated_at=start + timedelta(minutes=n),
                    pinned=n % 500 == 0,
                )
                for n in range(first, min(first + 1000, conversations))
            ]
            Conversation.objects.bulk_create(batch)
            rows = [
                Message(
                    conversation=convo,
                    role="user" if i % 2 == 0 else "assistant",
                    content=text(rng, vocabulary, weights, rng.randint(8, 20) if i % 2 == 0 else rng.randint(20, 60)),
                    created_at=convo.created_at + timedelta(seconds=i),
                )
                for convo in batch
                for i in range(messages_each)
            ]
            Message.objects.bulk_create(rows, batch_size=2000)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    else:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(
        f"  {username}: {conversations} conversations, {conversations * messages_each} messages"
        f" in {time.perf_counter() - began:.1f} s",
        file=sys.stderr,
    )
    return user


def search_latency(client, texts: list[str]) -> dict:
    """Search times, with a plain list page timed between them: on a shared
    machine the list's time shows how much of a search's is load."""
    for q in texts[:5]:  # warm the caches
        client.get("/api/conversations/", {"q": q})
    load_before = os.getloadavg()[0]
    times, plain, hits, by_kind = [], [], [], {}
    for number, q in enumerate(texts):
        began = time.perf_counter()
        response = client.get("/api/conversations/", {"q": q})
        elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200, response.content[:200]
        times.append(elapsed)
        by_kind.setdefault(KINDS[number % len(KINDS)], []).append(elapsed)
        hits.append(len(response.json()["conversations"]))
        began = time.perf_counter()
        client.get("/api/conversations/")
        plain.append((time.perf_counter() - began) * 1000)
    return {
        "queries": len(texts),
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
        "list_p50_ms": round(percentile(plain, 50), 1),
        "list_p95_ms": round(percentile(plain, 95), 1),
        "median_hits": statistics.median(hits),
        # The machine is shared: the 1-minute load average as the searches began and ended.
        "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "by_kind": {
            kind: {"p50_ms": round(percentile(v, 50), 1), "p95_ms": round(percentile(v, 95), 1)}
            for kind, v in by_kind.items()
        },
    }


def chat_page(user, rounds: int = 30) -> dict:
    from django.test import Client

    client = Client()
    client.force_login(user)
    client.get("/")
    times, size = [], 0
    for _ in range(rounds):
        began = time.perf_counter()
        response = client.get("/")
        times.append((time.perf_counter() - began) * 1000)
        size = len(response.content)
    return {
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "kb": round(size / 1024, 1),
    }


def percentile(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def import_row(megabytes: int) -> dict:
    """Import a ChatGPT conversations.json of about `megabytes` MB: time and memory."""
    import resource

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from conversations.history import importing

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("importer")
    rng = random.Random(50)
    vocabulary = words(rng)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    with tempfile.TemporaryFile() as file:
        entries = write_chatgpt_export(file, megabytes * 1024 * 1024, rng, vocabulary, weights)
        size = file.tell()
        file.seek(0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        began = time.perf_counter()
        result = importing.import_file(user, file)
        seconds = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(result.imported) == entries and not result.skipped and not result.error
    return {
        "file_mb": round(size / 1024 / 1024, 1),
        "conversations": entries,
        "seconds": round(seconds, 1),
        "peak_rss_growth_mb": round((after - before) / 1024, 1),
    }


def write_chatgpt_export(file, size: int, rng, vocabulary, weights) -> int:
    """A ChatGPT-shaped export of about `size` bytes, written entry by entry."""
    file.write(b"[")
    count = 0
    while file.tell() < size:
        mapping = {"root": {"id": "root", "message": None, "parent": None, "children": ["m0"]}}
        for n in range(20):
            role = "user" if n % 2 == 0 else "assistant"
            content = text(rng, vocabulary, weights, rng.randint(20, 200))
            message = {"author": {"role": role}, "content": {"content_type": "text", "parts": [content]}}
            mapping[f"m{n}"] = {"id": f"m{n}", "message": message, "parent": f"m{n - 1}" if n else "root"}
        entry = {"title": f"chat {count}", "create_time": 1.7e9 + count, "mapping": mapping, "current_node": "m19"}
        file.write((b"," if count else b"") + json.dumps(entry).encode())
        count += 1
    file.write(b"]")
    return count


# The parent: one child per backend, then the table.


def run_backend(backend: str, rounds: int, import_mb: int = 0) -> dict:
    env = dict(os.environ, DJANGO_ALLOWED_HOSTS="testserver", DJANGO_SECRET_KEY="bench-history", DJANGO_DEBUG="0")
    command = [sys.executable, "-m", "bench.history", "--child", backend, "--rounds", str(rounds)]
    if import_mb:
        command += ["--import-mb", str(import_mb)]
    with tempfile.TemporaryDirectory(prefix="chatsite-history-") as folder:
        if backend in ("sqlite", "import"):
            env["DATABASE_URL"] = f"sqlite:///{folder}/bench.sqlite3"
            return json.loads(subprocess.run(command, env=env, cwd=REPO, check=True, stdout=subprocess.PIPE).stdout)
        sys.path.insert(0, str(REPO))
        from scripts.services import postgres_server

        with postgres_server() as url:
            env["DATABASE_URL"] = url
            return json.loads(subprocess.run(command, env=env, cwd=REPO, check=True, stdout=subprocess.PIPE).stdout)


def table(results: list[dict]) -> str:
    lines = [
        "Search: GET /api/conversations/?q=... over 10,000 conversations and 200,000 messages (one user)",
        "",
        "| backend | queries | p50 ms | p95 ms | max ms | plain list page p50 / p95 ms, same run | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "search" not in r:
            continue
        s = r["search"]
        lines.append(
            f"| {r['backend']} | {s['queries']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']}"
            f" | {s['list_p50_ms']} / {s['list_p95_ms']} | {' → '.join(map(str, s.get('load', [])))} |"
        )
        for kind, k in s["by_kind"].items():
            lines.append(
                f"| {r['backend']}: {kind} | {s['queries'] // len(KINDS)} | {k['p50_ms']} | {k['p95_ms']} | | | |"
            )
    for r in results:
        if "import" in r:
            i = r["import"]
            lines += [
                "",
                f"Import (SQLite): a {i['file_mb']} MB ChatGPT conversations.json, {i['conversations']:,} conversations"
                f" of 20 messages: {i['seconds']} s, peak memory grew {i['peak_rss_growth_mb']} MB",
            ]
    lines += ["", "Chat page: GET / (the sidebar shows one page of 50)", ""]
    lines += ["| backend | conversations | p50 ms | p95 ms | size KB |", "|---|---|---|---|---|"]
    for r in results:
        for p in r.get("page", []):
            lines.append(f"| {r['backend']} | {p['conversations']:,} | {p['p50_ms']} | {p['p95_ms']} | {p['kb']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=200, help="search queries per backend")
    parser.add_argument("--import-mb", type=int, default=50, help="size of the import row's file (0: no import row)")
    parser.add_argument("--child", choices=("sqlite", "postgres", "import"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "import":
        print(json.dumps({"backend": "sqlite", "import": import_row(args.import_mb)}))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.rounds)))
        return 0
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    results = []
    for backend in backends:
        print(f"{backend}: populating and measuring...", file=sys.stderr)
        results.append(run_backend(backend, args.rounds))
    if args.import_mb:
        print(f"import: a {args.import_mb} MB file...", file=sys.stderr)
        results.append(run_backend("import", args.rounds, args.import_mb))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    data = {"stamp": stamp, "results": results}
    for name in (f"history-{stamp}.json", "history-latest.json"):
        (RESULTS / name).write_text(json.dumps(data, indent=2) + "\n")
    rendered = table(results)
    (RESULTS / "history-latest.txt").write_text(rendered)
    print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
