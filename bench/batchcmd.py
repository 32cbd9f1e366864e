"""The batch command: ``manage.py batch_prompts`` on the prompt file, batch 1 against batch B.

Each run is a whole process (start, model load, prompts, exit), timed by the
wall clock, as a user running it would see it. The output lines give the
token counts and how many prompts failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_once(
    repo: Path,
    env: dict[str, str],
    prompts_file: Path,
    output: Path,
    batch_size: int,
    max_new_tokens: int,
    user: str = "bench-batch",
) -> dict:
    """One ``batch_prompts`` process; returns its wall time and what its output says."""
    command = [
        sys.executable,
        "manage.py",
        "batch_prompts",
        str(prompts_file),
        "--output",
        str(output),
        "--user",
        user,
        "--temperature",
        "0",
        "--max-new-tokens",
        str(max_new_tokens),
        "--batch-size",
        str(batch_size),
        "--quiet",
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    lines = []
    if output.is_file():
        for raw in output.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
    completion = sum(int(line.get("completion_tokens") or 0) for line in lines)
    failed = sum(1 for line in lines if line.get("finish_reason") not in ("stop", "length"))
    return {
        "batch_size": batch_size,
        "wall_s": wall,
        "returncode": done.returncode,
        "outputs": len(lines),
        "failed": failed,
        "completion_tokens": completion,
        "tokens_per_s_wall": completion / wall if wall > 0 else 0.0,
        "summary": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "",
        "stderr_tail": done.stderr[-1500:] if done.returncode else "",
        "command": " ".join(["manage.py", *command[2:]]),
    }


def available(repo: Path) -> bool:
    return (repo / "conversations" / "management" / "commands" / "batch_prompts.py").is_file()


def run(
    repo: Path,
    env: dict[str, str],
    prompts: list[str],
    workdir: Path,
    batch_sizes: tuple[int, ...],
    max_new_tokens: int,
) -> dict:
    """``batch_prompts`` once per batch size on the same prompts; ratio of the first to the last wall time."""
    prompts_file = workdir / "batch-prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")
    runs = [
        run_once(repo, env, prompts_file, workdir / f"batch-{size}.jsonl", size, max_new_tokens) for size in batch_sizes
    ]
    result = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "runs": runs}
    if all(r["returncode"] == 0 for r in runs) and runs[-1]["wall_s"] > 0:
        result["speedup"] = runs[0]["wall_s"] / runs[-1]["wall_s"]
    return result
