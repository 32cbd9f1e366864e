"""The size row: a model shaped like SmolLM2-1.7B, randomly initialised, at each precision.

``python -m bench.size IN OUT`` measures ONE variant (fp32, bf16, int8 or
int4) in its own process, so its resident memory is that variant's alone:
the harness runs one child per variant. Speed and memory only: random
weights say nothing about quality.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import torch

# SmolLM2-1.7B's config.json (HuggingFaceTB/SmolLM2-1.7B-Instruct), the fields that set the cost.
SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 130000,
    "tie_word_embeddings": True,
}
VARIANTS = ("fp32", "bf16", "int8", "int4")


def build(variant: str, layers: int) -> torch.nn.Module:
    """The random model of SHAPE (``layers`` decoder layers) at ``variant``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from inference.quant import quantize

    config = LlamaConfig(**dict(SHAPE, num_hidden_layers=layers))
    torch.manual_seed(0)
    # Quantized variants start from bf16 weights: half the memory of fp32 on the way.
    dtype = torch.float32 if variant == "fp32" else torch.bfloat16
    model = LlamaForCausalLM(config).to(dtype).eval()
    if variant in ("int8", "int4"):
        quantize(model, variant)
    return model


def decode_rate(model: torch.nn.Module, new_tokens: int) -> float:
    """Greedy batch-1 decode tokens/s after a 32-token prompt."""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        output = model(input_ids=torch.arange(32).view(1, -1), past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(new_tokens):
            output = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
        return new_tokens / (time.perf_counter() - started)


def run(variant: str, layers: int, new_tokens: int) -> dict:
    started = time.monotonic()
    model = build(variant, layers)
    build_s = time.monotonic() - started
    rate = decode_rate(model, new_tokens)
    weights = {t.data_ptr(): t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())}
    return {
        "variant": variant,
        "layers": layers,
        "tokens_per_s": rate,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
        "weight_mb": sum(weights.values()) / 2**20,
        "build_s": round(build_s, 1),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    result = run(request["variant"], request.get("layers", SHAPE["num_hidden_layers"]), request["new_tokens"])
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
