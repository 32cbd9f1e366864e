"""The benchmark harness: ``python -m bench`` (``make bench``). See docs/performance.md.

One run, on one model and machine, in this order (never two heavy things at once):

1. raw ``model.generate`` (batch 1 and batch B) and the copy bandwidth, in a
   child process; llama.cpp on the same GGUF, in another;
2. a first server start with an empty model cache (timed, then stopped);
3. a cached start; one user over the WebSocket; the concurrency sweep;
4. ``manage.py batch_prompts`` with batch size 1 and B;
5. the table, ``bench/results/<stamp>.json`` and ``latest.json`` (``latest.txt``:
   the table), the chart ``latest-sweep.png`` (``--update-docs``: also
   docs/performance-sweep.png).

A phase that fails is reported and the others still run; the server is
always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import psutil

from . import batchcmd, clients, report
from .server import Server, migrate, server_env, server_settings

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
DOCS_CHART = REPO / "docs" / "performance-sweep.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: users 1,2,4, 3 one-user turns, 1 sweep turn, 32 new tokens, 8 batch prompts",
    )
    parser.add_argument("--skip-llamacpp", action="store_true", help="leave out the llama.cpp row")
    parser.add_argument("--users", default=None, help="concurrency levels, comma-separated (default 1,2,4,8,16)")
    parser.add_argument("--turns", type=int, default=None, help="turns of the one-user test (default 10)")
    parser.add_argument("--sweep-turns", type=int, default=None, help="turns per user at each sweep level (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per reply (default 128)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the raw and batch_prompts runs (default 8)")
    parser.add_argument(
        "--max-batch", type=int, default=16, help="CHAT_MAX_BATCH of the benchmarked server (default 16)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="CHAT_DTYPE for the server, batch_prompts and the raw runs (default: auto, fp32 on CPU)",
    )
    parser.add_argument(
        "--quant",
        default="auto",
        choices=("auto", "none", "int8", "int4"),
        help="CHAT_QUANT for the server, batch_prompts and the raw runs (default: auto, int4 on CPU)",
    )
    parser.add_argument("--skip-quality", action="store_true", help="no NLL quality column")
    parser.add_argument("--skip-size", action="store_true", help="no SmolLM2-1.7B-shaped size row")
    parser.add_argument("--skip-first-start", action="store_true", help="no start with an empty model cache")
    parser.add_argument("--skip-batch-prompts", action="store_true", help="no batch_prompts runs")
    parser.add_argument(
        "--update-docs", action="store_true", help=f"also write the chart to {DOCS_CHART.relative_to(REPO)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (database, server logs)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.users = [int(u) for u in (args.users or ("1,2,4" if quick else "1,2,4,8,16")).split(",") if u.strip()]
    args.turns = args.turns or (3 if quick else 10)
    args.sweep_turns = args.sweep_turns or (1 if quick else 3)
    args.follow_ups = 1 if quick else 4
    args.max_new_tokens = args.max_new_tokens or (32 if quick else 128)
    args.raw_repeats = 1 if quick else 3
    args.batch_prompts = 8 if quick else 32
    args.batch_new_tokens = 16 if quick else 64
    # The quality gate: every prompt, 128 tokens (quick: 8 prompts, 32 tokens, the run's variant only).
    args.quality_prompts = 8 if quick else 32
    args.quality_new_tokens = 32 if quick else 128
    # The size row: all 24 layers of SmolLM2-1.7B's shape (quick: 2, to check the phase runs).
    args.size_layers = 2 if quick else 24
    args.size_new_tokens = 8 if quick else 32
    if min(args.users) < 1 or args.turns < 1 or args.sweep_turns < 1 or args.max_new_tokens < 2:
        parser.error("users, turns and sweep turns must be at least 1, max new tokens at least 2")
    return args


class CpuMeter:
    """CPU used on the whole machine, and by this harness with its children, since ``start``.

    The machine may be shared: ``others`` is what processes outside the
    benchmark used meanwhile (in cores), so a reader can tell a slow figure
    from a busy neighbour.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.system, self.ours = self._system(), self._ours()

    @staticmethod
    def _system() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _ours() -> float:
        mine = os.times()  # this process and its children that have been waited for
        total = mine.user + mine.system + mine.children_user + mine.children_system
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total

    def read(self) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        system, ours = self._system() - self.system, self._ours() - self.ours
        return {
            "busy_cores": round(system / elapsed, 2),
            "bench_cores": round(ours / elapsed, 2),
            "others_cores": round(max(system - ours, 0.0) / elapsed, 2),
        }


class Phases:
    """Runs each phase, recording a failure instead of stopping the whole run."""

    def __init__(self, results: dict) -> None:
        self.results = results
        results.setdefault("errors", {})
        results.setdefault("phase_seconds", {})
        results.setdefault("phase_load_average", {})
        results.setdefault("phase_cpu", {})

    @contextlib.contextmanager
    def phase(self, name: str):
        print(f"[bench] {name} ...", flush=True)
        started = time.monotonic()
        meter = CpuMeter()
        try:
            yield
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed phase is reported; the others still run
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(f"[bench] {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        finally:
            elapsed = time.monotonic() - started
            self.results["phase_seconds"][name] = round(elapsed, 1)
            # The 1-minute load average as the phase ends: another job on the machine shows here.
            self.results["phase_load_average"][name] = round(os.getloadavg()[0], 2)
            cpu = self.results["phase_cpu"][name] = meter.read()
            print(
                f"[bench] {name} done in {elapsed:.0f} s (other processes used {cpu['others_cores']:.2f} cores)",
                flush=True,
            )


def child_json(module: str, request: dict, workdir: Path, timeout: float = 1800) -> dict:
    """Run ``python -m bench.<module> IN OUT`` and return OUT's JSON. Raises RuntimeError on failure."""
    inp, out = workdir / f"{module}-in.json", workdir / f"{module}-out.json"
    inp.write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", str(inp), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode or not out.is_file():
        raise RuntimeError(f"bench.{module} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def cpu_seconds(process: psutil.Process | None) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except (psutil.Error, AttributeError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prompts = [line.strip() for line in (BENCH / "prompts.txt").read_text().splitlines() if line.strip()]
    started = time.monotonic()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict = {
        "started_at": stamp,
        "machine": report.machine(),
        "versions": report.versions(REPO),
        "settings": {
            "quick": args.quick,
            "users": args.users,
            "one_user_turns": args.turns,
            "sweep_turns": args.sweep_turns,
            "max_new_tokens": args.max_new_tokens,
            "batch": args.batch,
            "chat_max_batch": args.max_batch,
            "dtype": args.dtype,
            "quant": args.quant,
            "raw_repeats": args.raw_repeats,
            "batch_prompts": args.batch_prompts,
            "batch_prompts_max_new_tokens": args.batch_new_tokens,
            "decoding": "greedy",
            "tokens_per_s": "(completion tokens - 1) / (last token - first token); the first token is TTFT's",
        },
    }
    phases = Phases(results)
    workdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-"))
    model_cache = REPO / "var" / "models"
    database_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    env = server_env(database_url, model_cache, args.max_batch, args.dtype, args.quant)
    results["settings"]["server_env"] = dict(
        server_settings(database_url, model_cache, args.max_batch, args.dtype, args.quant),
        CHAT_MODEL_CACHE_first_start="<a new empty folder>",
        DATABASE_URL="sqlite:///<work folder>/bench.sqlite3",
    )
    results["settings"]["server_command"] = "python -m daphne -b 127.0.0.1 -p PORT chatsite.asgi:application"
    print(f"[bench] work folder {workdir}; load average {results['machine']['load_average_at_start']}", flush=True)
    if results["machine"]["load_average_at_start"][0] > 0.5 * (os.cpu_count() or 1):
        print(
            "[bench] WARNING: the machine is busy; every figure below is lower than it would be on an idle one",
            flush=True,
        )
    try:
        run_phases(args, prompts, phases, results, workdir, model_cache, env)
    except KeyboardInterrupt:
        results["errors"]["interrupted"] = "stopped by Ctrl-C"
        print("[bench] interrupted; writing what was measured", flush=True)
    finally:
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["total_seconds"] = round(time.monotonic() - started, 1)
        results["ratios"] = report.ratios(results)
        results["targets"] = report.targets(results)
        # A run on a non-default dtype or quant is a variant: it keeps its own "latest" and never touches the docs.
        tag = "".join(f"-{value}" for value in (args.dtype, args.quant) if value != "auto")
        latest = f"latest{tag}"
        path = report.write_json(results, RESULTS, stamp + tag, latest)
        chart = report.chart(results, RESULTS / f"{latest}-sweep.png")
        if chart and args.update_docs and not tag:
            shutil.copyfile(chart, DOCS_CHART)
        (RESULTS / f"{latest}.txt").write_text(report.table(results) + "\n")
        print()
        print(report.table(results))
        print()
        print(
            f"[bench] results: {path.relative_to(REPO)}, {RESULTS.relative_to(REPO)}/{latest}.json"
            + (f", chart {chart.relative_to(REPO)}" if chart else ", no chart (pip install matplotlib)")
        )
        if results["errors"] or args.keep:
            print(f"[bench] server logs and database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results["errors"] else 0


def run_phases(args, prompts, phases: Phases, results: dict, workdir: Path, model_cache: Path, env: dict) -> None:
    raw_prompts = prompts[: max(args.batch, args.raw_repeats)]
    prompt_ids: list[list[int]] = []

    with phases.phase("raw"):
        raw = child_json(
            "raw",
            {
                "cache_dir": str(model_cache),
                "prompts": raw_prompts,
                "new_tokens": args.max_new_tokens,
                "batch": args.batch,
                "repeats": args.raw_repeats,
                "dtype": args.dtype,
                "quant": args.quant,
            },
            workdir,
        )
        prompt_ids = raw.pop("prompt_ids")
        results["bandwidth"] = raw.pop("bandwidth")
        results["raw"] = raw
        from .llamacpp import gguf_path

        results["model"] = {
            "name": raw["model"],
            "device": raw["device"],
            "dtype": raw["dtype"],
            "quant": raw.get("quant"),
            "parameters": raw["parameters"],
            "weight_bytes": raw["weight_bytes"],
            "gguf": str(gguf_path()),
            "converted_cache": str(model_cache),
        }
        bw = results["bandwidth"]["gb_per_s"] * 1e9
        # Decoding reads every weight once a step, whatever the batch size.
        results["bounds"] = {
            "transformers_batch1": bw / raw["weight_bytes"],
            "transformers_batch_n": args.batch * bw / raw["weight_bytes"],
        }

    from . import llamacpp

    if args.skip_llamacpp:
        results["llamacpp"] = {"skipped": "skipped (--skip-llamacpp)"}
    elif not llamacpp.available():
        results["llamacpp"] = {"skipped": "llama-cpp-python is not installed (pip install -r bench/requirements.txt)"}
        print(f"[bench] llama.cpp row skipped: {results['llamacpp']['skipped']}", flush=True)
    elif not prompt_ids:
        results["llamacpp"] = {"skipped": "no prompt ids (the raw phase failed)"}
    else:
        with phases.phase("llamacpp"):
            llama = child_json(
                "llamacpp",
                {
                    "prompts": prompt_ids,
                    "new_tokens": args.max_new_tokens,
                    "repeats": args.raw_repeats,
                    "batch": args.batch,
                    "threads": 2,
                },
                workdir,
            )
            results["llamacpp"] = llama
            if llama.get("weights"):
                bw = results.get("bandwidth", {}).get("gb_per_s", 0) * 1e9
                results.setdefault("bounds", {}).update(
                    llamacpp_batch1=bw / llama["weights"]["bytes"],
                    llamacpp_batch_n=args.batch * bw / llama["weights"]["bytes"],
                )

    quality_and_size(args, prompts, phases, results, workdir, model_cache)

    startup = results.setdefault("startup", {})
    with phases.phase("migrate"):
        startup["migrate_s"] = migrate(REPO, env)

    if not args.skip_first_start:
        with phases.phase("first start"):
            fresh = workdir / "empty-model-cache"
            fresh.mkdir()
            first_env = dict(env, CHAT_MODEL_CACHE=str(fresh))
            with Server(REPO, first_env, workdir / "server-first.log") as server:
                startup["first_s"] = server.start()
            shutil.rmtree(fresh, ignore_errors=True)

    with phases.phase("server"):
        with Server(REPO, env, workdir / "server.log") as server:
            startup["cached_s"] = server.start()
            startup["health"] = server.health
            time.sleep(1)
            startup["idle_rss_mb"] = server.rss() / 2**20
            server_process = psutil.Process(server.process.pid)
            me = psutil.Process()
            users: list[clients.User] = []
            try:
                users = one_user(args, prompts, results, server, server_process, me)
            except Exception as exc:  # noqa: BLE001 - the sweep can still run
                results["errors"]["one user"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                print(f"[bench] one user FAILED: {exc}", flush=True)
            server.reset_peak()
            try:
                sweep(args, prompts, results, server, server_process, me, users)
            finally:
                startup["peak_rss_mb"] = server.peak_rss / 2**20
                results["server_log_tail"] = server.log_tail(15)

    if args.skip_batch_prompts:
        results["batch_prompts"] = {"skipped": "skipped (--skip-batch-prompts)"}
    elif not batchcmd.available(REPO):
        results["batch_prompts"] = {"skipped": "manage.py batch_prompts does not exist yet"}
    else:
        with phases.phase("batch_prompts"):
            results["batch_prompts"] = batchcmd.run(
                REPO, env, prompts[: args.batch_prompts], workdir, (1, args.batch), args.batch_new_tokens
            )
            for run in results["batch_prompts"]["runs"]:
                if run["returncode"]:
                    results["errors"][f"batch_prompts -b {run['batch_size']}"] = run["stderr_tail"]


def quality_and_size(args, prompts, phases: Phases, results: dict, workdir: Path, model_cache: Path) -> None:
    """The NLL quality column and the SmolLM2-1.7B-shaped size row, each in child processes."""
    if args.skip_quality:
        results["quality"] = {"skipped": "skipped (--skip-quality)"}
    else:
        chosen = (results.get("raw") or {}).get("quant") or ("int4" if args.quant == "auto" else args.quant)
        variants = [chosen] if args.quick else ["bf16", "int8", "int4"]
        variants = [v for v in variants if v != "none"] or ["bf16"]
        with phases.phase("quality"):
            results["quality"] = child_json(
                "quality",
                {
                    "cache_dir": str(model_cache),
                    "prompts": prompts[: args.quality_prompts],
                    "new_tokens": args.quality_new_tokens,
                    "variants": variants,
                },
                workdir,
            )
            results["quality"]["chosen"] = chosen
    if args.skip_size:
        results["size"] = {"skipped": "skipped (--skip-size)"}
        return
    rows = results.setdefault("size", {"rows": []})["rows"]
    from .size import VARIANTS

    for variant in VARIANTS:
        with phases.phase(f"size {variant}"):
            rows.append(
                child_json(
                    "size",
                    {"variant": variant, "layers": args.size_layers, "new_tokens": args.size_new_tokens},
                    workdir,
                )
            )


def one_user(args, prompts, results, server, server_process, me) -> list[clients.User]:
    print(f"[bench] one user: {args.turns} turns ...", flush=True)
    user = clients.User.sign_up(server.url, "bench-1")
    # Every turn sends the raw prefill's prompt (numbered, so never a repeat: clients.py), in a new conversation.
    cpu0, me0, t0 = cpu_seconds(server_process), cpu_seconds(me), time.monotonic()
    meter = CpuMeter()
    summary, turns = clients.run_level([user], [prompts[0]], args.turns, args.max_new_tokens)
    elapsed = time.monotonic() - t0
    summary["others_cores"] = meter.read()["others_cores"]
    summary["server_cpu_util"] = (cpu_seconds(server_process) - cpu0) / elapsed
    summary["client_cpu_util"] = (cpu_seconds(me) - me0) / elapsed
    summary["turn_rows"] = clients.turn_rows(turns)
    results["one_user"] = summary
    summary["follow_up"] = clients.run_follow_ups(user, prompts, args.follow_ups, args.max_new_tokens)
    return [user]


def sweep(args, prompts, results, server, server_process, me, users: list[clients.User]) -> None:
    users = list(users)
    needed = max(args.users)
    while len(users) < needed:
        users.append(clients.User.sign_up(server.url, f"bench-{len(users) + 1}"))
    levels = []
    results["sweep"] = {
        "max_batch": args.max_batch,
        "turns_each": args.sweep_turns,
        "max_new_tokens": args.max_new_tokens,
        "levels": levels,
    }
    for count in args.users:
        print(f"[bench] sweep: {count} user(s) x {args.sweep_turns} turns ...", flush=True)
        cpu0, me0, t0 = cpu_seconds(server_process), cpu_seconds(me), time.monotonic()
        meter = CpuMeter()
        summary, turns = clients.run_level(users[:count], prompts, args.sweep_turns, args.max_new_tokens)
        elapsed = time.monotonic() - t0
        summary["others_cores"] = meter.read()["others_cores"]
        summary["users"] = count
        summary["server_cpu_util"] = (cpu_seconds(server_process) - cpu0) / elapsed
        summary["client_cpu_util"] = (cpu_seconds(me) - me0) / elapsed
        summary["peak_rss_mb_so_far"] = server.peak_rss / 2**20
        levels.append(summary)
        print(
            f"[bench]   {summary['aggregate_tokens_per_s']:.1f} tokens/s, TTFT p95 "
            f"{(summary['ttft_p95_s'] or 0):.2f} s, errors {summary['errors']}",
            flush=True,
        )
