"""The quality column: NLL of float32's greedy replies under each variant (``python -m bench.quality IN OUT``).

Float32 answers every prompt greedily (generate_batch); each variant then
scores those replies (inference/quality.py). A variant passes the gate at
most ``NLL_ALLOWANCE`` nats a token above float32. Variants load one after
another, in this process, each freed before the next.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

# (label, EngineConfig fields) of the variants scored besides float32.
VARIANTS = {
    "bf16": {"dtype": "bfloat16", "quant": "none"},
    "int8": {"quant": "int8"},
    "int4": {"quant": "int4"},
}


def run(cache_dir: Path, prompts: list[str], new_tokens: int, variants: list[str], threads: int) -> dict:
    """{"fp32_nll", "replies", "reply_tokens", "variants": {label: {"nll", "delta", "pass"}}}."""
    from inference import EngineConfig, load_engine
    from inference.quality import NLL_ALLOWANCE, mean_nll, reference_replies

    base = {"cache_dir": cache_dir, "device": "cpu", "num_threads": threads, "max_batch_size": 8}
    started = time.monotonic()
    engine = load_engine(EngineConfig(quant="none", **base))
    try:
        replies = reference_replies(engine, prompts, new_tokens)
        reference = mean_nll(engine.model, replies)
    finally:
        engine.close()
    del engine
    gc.collect()
    result: dict = {
        "fp32_nll": reference,
        "replies": len(replies),
        "reply_tokens": sum(len(reply) for _, reply in replies),
        "allowance": NLL_ALLOWANCE,
        "variants": {},
    }
    for label in variants:
        variant = load_engine(EngineConfig(**base, **VARIANTS[label]))
        try:
            nll = mean_nll(variant.model, replies)
        finally:
            variant.close()
        del variant
        gc.collect()
        delta = nll - reference
        result["variants"][label] = {"nll": nll, "delta": delta, "pass": delta <= NLL_ALLOWANCE}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    result = run(
        Path(request["cache_dir"]),
        request["prompts"],
        request["new_tokens"],
        request["variants"],
        request.get("threads", 0),
    )
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
