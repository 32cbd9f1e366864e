"""The raw baseline: ``model.generate`` on the model the server loads, no server.

Loads the model with Chatsite's own loader (``inference.loading.load_model``,
default settings, so the same device, dtype and converted weights as the
server) and times greedy generation of a fixed number of new tokens, batch 1
and batch 8, plus the prefill of one prompt, a bare decode loop (forward +
argmax, no ``generate``) and a profile of one decode step. Also measures the
machine's copy bandwidth, which bounds every figure: generating one token
reads every weight once.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SYSTEM_PROMPT = "You are a helpful assistant."  # the engine's default (inference.config.EngineConfig)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    name: str
    device: str
    dtype: str
    load_seconds: float
    quant: str = "none"


def load(cache_dir: Path, dtype: str = "auto", quant: str = "auto") -> Loaded:
    """The default model, loaded as the server loads it (converting into ``cache_dir`` if needed)."""
    from inference import EngineConfig
    from inference.loading import load_model

    loaded = load_model(EngineConfig(cache_dir=cache_dir, dtype=dtype, quant=quant))
    return Loaded(
        loaded.model,
        loaded.tokenizer,
        loaded.name,
        str(loaded.device),
        str(loaded.dtype).removeprefix("torch."),
        loaded.load_seconds,
        loaded.quant,
    )


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids as the engine builds them: default system prompt, user turn, assistant header."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def weight_bytes(model: Any) -> int:
    """Bytes of weights read per decode step: every parameter and buffer once (tied ones counted once).

    Buffers hold quantized layers' packed weights and scales; the embedding
    is counted whole although a step reads one row of it.
    """
    seen, total = set(), 0
    for parameter in list(model.parameters()) + list(model.buffers()):
        if parameter.data_ptr() in seen:
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel() * parameter.element_size()
    return total


def copy_bandwidth(megabytes: int = 1024, repeats: int = 5) -> dict:
    """Best-of-``repeats`` copy bandwidth of a large buffer, in GB/s (bytes read + bytes written).

    torch's copy uses all of torch's threads, as the model does; a model whose
    weights do not fit in cache cannot decode faster than bytes / bandwidth.
    """
    n = megabytes * 1024 * 1024 // 4
    source = torch.ones(n, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    moved = 2 * source.numel() * source.element_size()
    # Decoding only reads weights, so a read-only pass (a sum) is shown too.
    read_best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        float(source.sum())
        read_best = min(read_best, time.perf_counter() - started)
    read = source.numel() * source.element_size()
    del source, target
    return {
        "gb_per_s": moved / best / 1e9,
        "read_gb_per_s": read / read_best / 1e9,
        "buffer_mb": megabytes,
        "threads": torch.get_num_threads(),
        "method": "torch Tensor.copy_ of a float32 buffer, best of %d, (read+write)/time" % repeats,
    }


class _Timestamps:
    """A generate() streamer recording when each step's tokens arrive (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _generation_config(model: Any, new_tokens: int, tokenizer: Any):
    from transformers import GenerationConfig

    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    # Greedy, exactly new_tokens tokens: min_new_tokens masks EOS until the end.
    config.update(
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=1.0,
        num_beams=1,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    return config


def generate_run(loaded: Loaded, prompts_ids: list[list[int]], new_tokens: int) -> dict:
    """One ``model.generate`` call on ``prompts_ids`` (left-padded) generating ``new_tokens`` each.

    Returns timings: prefill (to the first token), decode tokens/s over the
    steps after the first token, and overall tokens/s.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    width = max(len(ids) for ids in prompts_ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(prompts_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompts_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    device = model.get_input_embeddings().weight.device
    stamps = _Timestamps()
    config = _generation_config(model, new_tokens, tokenizer)
    with torch.inference_mode():
        started = time.perf_counter()
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config, streamer=stamps
        )
        finished = time.perf_counter()
    generated = output.shape[1] - width
    rows = len(prompts_ids)
    first = stamps.times[1]
    return {
        "rows": rows,
        "new_tokens": generated,
        "prompt_tokens": [len(ids) for ids in prompts_ids],
        "seconds": finished - started,
        "prefill_s": first - started,
        # The first token belongs to the prefill; the rest are decode steps.
        "decode_tokens_per_s": rows * (generated - 1) / (finished - first),
        "tokens_per_s": rows * generated / (finished - started),
        "per_row_decode_tokens_per_s": (generated - 1) / (finished - first),
        "step_ms": (finished - first) / (generated - 1) * 1000,
    }


def prefill_seconds(loaded: Loaded, ids: list[int], repeats: int = 7) -> dict:
    """Median time of the prompt's forward pass plus the argmax of the first token (a fresh cache each time)."""
    from transformers import DynamicCache

    model = loaded.model
    device = model.get_input_embeddings().weight.device
    tensor = torch.tensor([ids], dtype=torch.long, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            output = model(
                input_ids=tensor, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1
            )
            int(output.logits[:, -1, :].argmax(dim=-1))
            times.append(time.perf_counter() - started)
    times = times[1:]  # the first pays for allocations
    return {"prompt_tokens": len(ids), "median_s": statistics.median(times), "min_s": min(times)}


def _prefill(model, ids: list[int]):
    """Run the prompt once; returns the filled cache and the greedy first token."""
    from transformers import DynamicCache

    device = model.get_input_embeddings().weight.device
    cache = DynamicCache(config=model.config)
    output = model(
        input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True, logits_to_keep=1
    )
    return cache, output.logits[:, -1, :].argmax(dim=-1, keepdim=True)


def bare_decode(loaded: Loaded, ids: list[int], new_tokens: int) -> dict:
    """A hand-written greedy loop (forward, argmax, append) with no ``generate``: the floor of
    what any Python-driven decode loop on this model can do."""
    model = loaded.model
    with torch.inference_mode():
        cache, token = _prefill(model, ids)
        started = time.perf_counter()
        for _ in range(new_tokens - 1):
            output = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = output.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        int(token)
        elapsed = time.perf_counter() - started
    return {"decode_tokens_per_s": (new_tokens - 1) / elapsed, "step_ms": elapsed / (new_tokens - 1) * 1000}


_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::mv")
# The quantized layers' kernels (int4 and int8 weight-only, oneDNN's int8 head) multiply the weights too.
_QUANTIZED_MATMUL_PREFIXES = ("aten::_weight_int4pack_mm", "aten::_weight_int8pack_mm", "onednn::qlinear")


def profile_step(loaded: Loaded, ids: list[int], steps: int = 24) -> dict:
    """Where one batch-1 decode step's time goes, from the torch profiler.

    Returns milliseconds per step: matrix multiplies (the weights), attention,
    everything else torch ran, and the rest of the wall time (Python and
    framework overhead between operators).
    """
    from torch.profiler import ProfilerActivity, profile

    model = loaded.model
    with torch.inference_mode():
        cache, token = _prefill(model, ids)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                output = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
                token = output.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            int(token)
            wall = time.perf_counter() - started
    groups = {"matmul": 0.0, "attention": 0.0, "other_ops": 0.0}
    for event in prof.key_averages():
        name = event.key
        self_us = event.self_cpu_time_total
        if name in _MATMUL_OPS or name.startswith(_QUANTIZED_MATMUL_PREFIXES):
            groups["matmul"] += self_us
        elif "attention" in name or "flash" in name or "sdpa" in name:
            groups["attention"] += self_us
        else:
            groups["other_ops"] += self_us
    per_step = {key: value / 1000 / steps for key, value in groups.items()}
    wall_ms = wall * 1000 / steps
    # The profiler's own overhead inflates wall time a little; overhead is what is not inside an op.
    per_step["python_and_dispatch"] = max(wall_ms - sum(per_step.values()), 0.0)
    per_step["wall_ms_profiled"] = wall_ms
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    per_step["top_ops"] = [
        {"op": e.key, "ms_per_step": e.self_cpu_time_total / 1000 / steps, "calls": e.count // steps} for e in top
    ]
    return per_step


def run(
    cache_dir: Path,
    prompts: list[str],
    new_tokens: int,
    batch: int,
    repeats: int,
    dtype: str = "auto",
    quant: str = "auto",
) -> dict:
    """The whole raw section: load, bandwidth, prefill, batch 1, batch ``batch``, bare loop, profile."""
    from inference.loading import parameter_count

    torch.manual_seed(0)
    loaded = load(cache_dir, dtype, quant)
    tokenizer = loaded.tokenizer
    ids = [chat_ids(tokenizer, prompt) for prompt in prompts]
    result: dict = {
        "model": loaded.name,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "quant": loaded.quant,
        "load_seconds": round(loaded.load_seconds, 2),
        "parameters": parameter_count(loaded.model),
        "weight_bytes": weight_bytes(loaded.model),
        "torch_threads": torch.get_num_threads(),
        "new_tokens": new_tokens,
        # For llama.cpp, so both engines get exactly these prompts (the harness drops it from the report).
        "prompt_ids": ids,
    }
    # Warm-up: kernel selection and allocator, as the server's scheduler does at start.
    generate_run(loaded, ids[:1], 8)
    generate_run(loaded, ids[:batch], 4)

    result["prefill"] = prefill_seconds(loaded, ids[0])
    singles = [generate_run(loaded, [ids[i % len(ids)]], new_tokens) for i in range(repeats)]
    result["batch1_runs"] = singles
    result["batch1"] = {
        "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in singles),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in singles),
        "step_ms": statistics.median(r["step_ms"] for r in singles),
    }
    batched = sorted(
        (generate_run(loaded, ids[:batch], new_tokens) for _ in range(repeats)), key=lambda r: r["decode_tokens_per_s"]
    )
    result["batch_n"] = dict(
        batched[len(batched) // 2],
        batch=batch,  # the median run
        runs_decode_tokens_per_s=[r["decode_tokens_per_s"] for r in batched],
    )
    result["bare_loop"] = bare_decode(loaded, ids[0], new_tokens)
    result["profile"] = profile_step(loaded, ids[0])
    del loaded
    return result


def main(argv: list[str]) -> int:
    """``python -m bench.raw IN.json OUT.json``: the raw section in a process of its own."""
    import json

    request = json.loads(Path(argv[0]).read_text())
    result = {"bandwidth": copy_bandwidth(request.get("bandwidth_mb", 1024))}
    result.update(
        run(
            Path(request["cache_dir"]),
            request["prompts"],
            request["new_tokens"],
            request["batch"],
            request["repeats"],
            request.get("dtype", "auto"),
            request.get("quant", "auto"),
        )
    )
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
