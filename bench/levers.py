"""Levers: what would make decoding faster, measured on the default model (optional).

``python -m bench.levers [--new-tokens N] [--prompts K] [--skip-compile]`` times a
batch-1 greedy decode loop (forward + argmax, no ``generate``) for variants of
the model the server loads, and checks each variant's quality against fp32:

* ``fp32``: the server as it is (DynamicCache, eager);
* ``bf16``: weights and activations in bfloat16 (half the bytes per token);
* ``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` on every Linear
  (int8 per-channel weights, a quarter of the bytes; activations quantized on
  the fly, which is what hurts quality);
* ``fp32-static``: a pre-allocated StaticCache (no ``torch.cat`` per layer per step);
* ``fp32-static-compiled``, ``bf16-static-compiled``: the same with the decode
  step under ``torch.compile`` (fewer Python steps per token; compile time
  reported separately).

Quality: for each prompt fp32 decodes greedily; each variant's mean negative
log-likelihood of that fp32 text (teacher-forced) against fp32's own, and how
many of the variant's own greedy tokens match fp32's before they diverge.
Prints a table and writes ``bench/results/levers-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import raw

REPO = Path(__file__).resolve().parent.parent
STATIC_CACHE_LEN = 512


def _decode_dynamic(model, ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        tokens = [int(token)]
        started = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            tokens.append(int(token))
        elapsed = time.perf_counter() - started
    return tokens, (new_tokens - 1) / elapsed


def _decode_static(model, step, ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    from transformers import StaticCache

    with torch.inference_mode():
        # One size for every prompt: a compiled step would recompile for each new cache shape.
        cache = StaticCache(config=model.config, max_cache_len=STATIC_CACHE_LEN)
        positions = torch.arange(len(ids))
        out = model(
            input_ids=torch.tensor([ids]),
            past_key_values=cache,
            cache_position=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        tokens = [int(token)]
        position = torch.tensor([len(ids)])
        started = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits = step(token, cache, position)
            token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            tokens.append(int(token))
            position = position + 1
        elapsed = time.perf_counter() - started
    return tokens, (new_tokens - 1) / elapsed


def _nll(model, ids: list[int], continuation: list[int]) -> float:
    """Mean negative log-likelihood of ``continuation`` after ``ids`` (teacher-forced, one forward)."""
    with torch.inference_mode():
        full = torch.tensor([ids + continuation])
        logits = model(input_ids=full, use_cache=False).logits[0, len(ids) - 1 : -1].float()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(continuation)))


def _agreement(reference: list[int], tokens: list[int]) -> int:
    for index, (a, b) in enumerate(zip(reference, tokens, strict=False)):
        if a != b:
            return index
    return min(len(reference), len(tokens))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4, help="prompts for speed and quality (default 4)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (slow to compile)")
    args = parser.parse_args(argv)

    prompts = [line for line in (REPO / "bench" / "prompts.txt").read_text().splitlines() if line.strip()]
    loaded = raw.load(REPO / "var" / "models")
    base = loaded.model
    ids = [raw.chat_ids(loaded.tokenizer, prompt) for prompt in prompts[: args.prompts]]
    _decode_dynamic(base, ids[0], 8)  # warm-up

    reference = [_decode_dynamic(base, prompt, args.new_tokens)[0] for prompt in ids]
    reference_nll = [_nll(base, prompt, ref) for prompt, ref in zip(ids, reference, strict=True)]

    def eager_step(model):
        def step(token, cache, position):
            return model(
                input_ids=token, past_key_values=cache, cache_position=position, use_cache=True, logits_to_keep=1
            ).logits

        return step

    variants = {}

    def measure(name: str, model, static: bool = False, step=None, extra: dict | None = None) -> None:
        print(f"[levers] {name} ...", flush=True)
        rates, agreements, nlls = [], [], []
        for prompt, ref in zip(ids, reference, strict=True):
            if static:
                tokens, rate = _decode_static(model, step, prompt, args.new_tokens)
            else:
                tokens, rate = _decode_dynamic(model, prompt, args.new_tokens)
            rates.append(rate)
            agreements.append(_agreement(ref, tokens))
            nlls.append(_nll(model, prompt, ref))
        variants[name] = dict(
            extra or {},
            decode_tokens_per_s=statistics.median(rates),
            weight_bytes=raw.weight_bytes(model) if name != "int8-dynamic" else None,
            tokens_matching_fp32=statistics.mean(agreements),
            identical_replies=sum(a == args.new_tokens for a in agreements),
            nll_delta=statistics.mean(n - r for n, r in zip(nlls, reference_nll, strict=True)),
        )

    measure("fp32", base)
    bf16 = _copy(base).to(torch.bfloat16)
    measure("bf16", bf16)
    # Per-channel weight scales: the best of torch's dynamic int8 options on this model.
    from torch.ao.quantization import per_channel_dynamic_qconfig

    int8 = torch.ao.quantization.quantize_dynamic(
        _copy(base), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
    )
    measure("int8-dynamic", int8, extra={"note": "int8 Linear weights (per channel), activations quantized per step"})
    del int8
    measure("fp32-static", base, static=True, step=eager_step(base))
    if not args.skip_compile:
        for name, model in (("fp32-static-compiled", base), ("bf16-static-compiled", bf16)):
            compiled_forward = torch.compile(eager_step(model), dynamic=False)
            started = time.perf_counter()
            _decode_static(model, compiled_forward, ids[0], 4)  # compiles
            compile_s = time.perf_counter() - started
            measure(name, model, static=True, step=compiled_forward, extra={"compile_s": compile_s})

    result = {
        "model": loaded.name,
        "new_tokens": args.new_tokens,
        "prompts": len(ids),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reference_nll": statistics.mean(reference_nll),
        "variants": variants,
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = REPO / "bench" / "results" / f"levers-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    fp32 = variants["fp32"]["decode_tokens_per_s"]
    print(f"\nbatch-1 greedy decode, {args.new_tokens} tokens, {len(ids)} prompts, {torch.get_num_threads()} threads")
    print(f"{'variant':24s} {'tokens/s':>9s} {'vs fp32':>8s} {'same tokens':>12s} {'identical':>9s} {'NLL delta':>10s}")
    for name, v in variants.items():
        print(
            f"{name:24s} {v['decode_tokens_per_s']:9.1f} {v['decode_tokens_per_s'] / fp32:7.2f}x "
            f"{v['tokens_matching_fp32']:12.1f} {v['identical_replies']:>5d}/{len(ids):<3d} {v['nll_delta']:+10.4f}"
        )
    print(f"\n{path.relative_to(REPO)}")
    return 0


def _copy(model):
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    raise SystemExit(main())
