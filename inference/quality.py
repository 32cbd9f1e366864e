"""The quality gate of a quantization: how much less likely it finds the full-precision model's replies.

Take the float32 model's greedy replies to a set of prompts; score them under
another variant of the same model (int4, bf16, ...) as the mean negative
log-likelihood per reply token. The variant passes when its NLL is at most
``NLL_ALLOWANCE`` nats above float32's own. A variant that would answer
differently shows up here long before it fails a fact in a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .params import GenerationParams
from .streaming import Request

# The most a quantized variant may add to the reference's NLL, in nats per token.
NLL_ALLOWANCE = 0.01

Scored = tuple[list[int], list[int]]  # (prompt ids, reply ids)


def reference_replies(engine: Any, prompts: Sequence[str], max_new_tokens: int) -> list[Scored]:
    """Greedy replies of ``engine`` to each prompt (one user turn), as (prompt ids, reply ids)."""
    requests = [
        Request(
            messages=[{"role": "user", "content": prompt}],
            params=GenerationParams(temperature=0, max_new_tokens=max_new_tokens),
        )
        for prompt in prompts
    ]
    results = engine.generate_batch(requests)
    return [
        (engine.prepare(request).ids, engine.tokenizer.encode(result.text, add_special_tokens=False))
        for request, result in zip(requests, results, strict=True)
        if result.text
    ]


def mean_nll(model: Any, replies: Sequence[Scored]) -> float:
    """The mean negative log-likelihood per reply token of ``replies`` under ``model``, in nats."""
    device = model.get_input_embeddings().weight.device
    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt, reply in replies:
            ids = torch.tensor([prompt + reply], dtype=torch.long, device=device)
            # The logits at the last prompt token and every reply token but the last predict the reply.
            logits = model(input_ids=ids, logits_to_keep=len(reply) + 1).logits[0, :-1].float()
            target = torch.tensor(reply, dtype=torch.long, device=logits.device)
            total += F.cross_entropy(logits, target, reduction="sum").item()
            count += len(reply)
    return total / count if count else 0.0
