"""A lean decoding step for Llama-architecture models (SmolLM2 among them).

At batch 1 on a CPU a step of the generic transformers forward spends more
time dispatching small operations and running Python than multiplying
matrices: per layer it calls q, k and v and gate and up separately, builds
an attention mask, and wraps every result in output objects. This step does
the same arithmetic with fewer calls: q/k/v as one matrix, gate/up as one
matrix (210 matrix calls a step become 120 on SmolLM2-135M), attention for
the one new token as two plain matmuls (torch's CPU scaled_dot_product_attention
is several times slower there in bf16), no mask when no row is padded, nothing
but tensors in between.

``fuse_projections`` makes the fused layers (before quantization, which
packs them as they are: int4's packed layout depends on the whole matrix, so
packed pieces cannot be joined afterwards). The original q/k/v and gate/up
layers become slices of the fused outputs, so the generic forward, which
still reads prompts, computes each fused product once too and the weights
are held once. A model of another architecture, or one spread over devices,
is left alone and keeps the generic forward (``LeanDecoder.for_model``
returns None).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .capabilities import cpu_has

logger = logging.getLogger(__name__)


def supported(model: Any) -> bool:
    """Whether ``model`` is a LlamaForCausalLM this module can fuse and decode."""
    config: Any = getattr(model, "config", None)
    if type(model).__name__ != "LlamaForCausalLM" or getattr(config, "model_type", None) != "llama":
        return False
    if config.attention_bias or config.mlp_bias or config.hidden_act != "silu":
        return False
    return getattr(config, "pretraining_tp", 1) == 1 and len({p.device for p in model.parameters()}) == 1


def fuse_projections(model: Any) -> bool:
    """Give every layer of a supported model ``qkv_proj`` and ``gate_up_proj``; returns whether it did.

    Dense weights only (call it before quantizing). Idempotent.
    """
    if not supported(model):
        return False
    for block in model.model.layers:
        attention, mlp = block.self_attn, block.mlp
        if not hasattr(attention, "qkv_proj"):
            _fuse(attention, "qkv_proj", ("q_proj", "k_proj", "v_proj"))
        if not hasattr(mlp, "gate_up_proj"):
            _fuse(mlp, "gate_up_proj", ("gate_proj", "up_proj"))
    return True


def _fuse(parent: nn.Module, fused_name: str, names: tuple[str, ...]) -> None:
    parts = [getattr(parent, name) for name in names]
    weight = torch.cat([part.weight.detach() for part in parts])
    fused = nn.Linear(parts[0].in_features, weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    setattr(parent, fused_name, fused)
    memo = _Memo(parent, fused_name)
    start = 0
    for name, part in zip(names, parts, strict=True):
        setattr(parent, name, _Slice(memo, start, start + part.out_features, last=name == names[-1]))
        start += part.out_features


class _Memo:
    """The fused layer of a parent module and its latest output, shared by the slices of one product.

    The generic forward calls q_proj, k_proj and v_proj on the same input
    tensor one after another: the first call computes the fused product, the
    others take their columns of it.
    """

    def __init__(self, parent: nn.Module, fused_name: str) -> None:
        # Looked up by name at each call: quantization replaces the fused layer.
        self.parent, self.fused_name = parent, fused_name
        self.last_input: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None

    def output(self, x: torch.Tensor, last: bool) -> torch.Tensor:
        """The fused product of ``x``; ``last``: the final slice asks, so let go of it afterwards."""
        output = self.last_output
        if x is not self.last_input or output is None:
            output = getattr(self.parent, self.fused_name)(x)
        # Holding a long prompt's activations until the next request would cost memory for nothing.
        self.last_input, self.last_output = (None, None) if last else (x, output)
        return output


class _Slice(nn.Module):
    """A projection that is columns ``start:end`` of a fused one."""

    def __init__(self, memo: _Memo, start: int, end: int, last: bool) -> None:
        super().__init__()
        # Not a submodule: the fused layer is registered once, under its own name.
        self._memo = memo
        self.start, self.end, self.last = start, end, last
        self.out_features = end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._memo.output(x, self.last)[..., self.start : self.end]


class LeanDecoder:
    """One decoding step of a LlamaForCausalLM: fused projections, few operations."""

    def __init__(self, model: Any) -> None:
        fuse_projections(model)
        inner = model.model
        self.embed = inner.embed_tokens
        self.norm = _norm(inner.norm)
        self.rotary = inner.rotary_emb
        self.head = _flat(model.get_output_embeddings())
        batches_in_bf16 = bf16_batches_pay(next(model.parameters()).device)
        self.layers = [_Layer(layer, model.config, batches_in_bf16) for layer in inner.layers]

    @classmethod
    def for_model(cls, model: Any) -> LeanDecoder | None:
        """A lean decoder for ``model`` (fusing its projections if not yet done), or None when it
        must keep the generic forward."""
        return cls(model) if supported(model) else None

    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Decode one token a row: ``tokens`` and ``positions`` (rows, 1), ``mask`` (rows, cache length + 1)
        or None when no row is padded. Appends to ``cache``; returns float32 logits (rows, vocab)."""
        # One token a row, so activations stay 2-D (rows, features) throughout: no reshapes around the matmuls.
        hidden = self.embed(tokens.view(-1))
        cos, sin = self.rotary(hidden, positions)
        # rotate_half(x) * sin == roll(x, half) * sin with sin's first half negated: one roll, no cat of pieces.
        half = cos.shape[-1] // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        attend = None if mask is None else mask[:, None, None, :].bool()
        for layer, cached in zip(self.layers, cache.layers, strict=True):
            hidden = layer.forward(hidden, cos, sin, cached, attend)
        return self.head(self.norm(hidden)).float()


def bf16_batches_pay(device: torch.device) -> bool:
    """Whether attention over several rows may run in the cache's bf16 on ``device``: on an
    accelerator, or on a CPU that multiplies bf16 natively (AVX-512 BF16 or AMX).

    Elsewhere torch emulates bf16 matmuls and float32 is much faster: on a
    2-core AVX2 EPYC an 8-row step with about 100 cached tokens took 65.8 ms
    in bf16 against 49.3 ms in float32 (two threads; one row: no difference).
    """
    return device.type != "cpu" or cpu_has("avx512_bf16", "amx_bf16")


def _norm(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """LlamaRMSNorm's arithmetic, called without the module machinery (61 norms a step on SmolLM2).

    torch's rms_norm normalizes in float32 and rounds back to the input's
    dtype, as LlamaRMSNorm does, in one call instead of six; the weight is
    applied afterwards, in the input's dtype, as LlamaRMSNorm does too (given
    to rms_norm it would be applied in float32 before rounding: other tokens).
    """
    weight, eps, shape = module.weight, module.variance_epsilon, tuple(module.weight.shape)
    return lambda x: weight * F.rms_norm(x, shape, None, eps)


def _flat(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``layer``'s product for a contiguous 2-D input: the quantized kernel itself where there is one."""
    flat = getattr(layer, "flat", None)
    if flat is not None:
        return flat()
    if isinstance(layer, nn.Linear):
        weight, bias = layer.weight, layer.bias
        return lambda x: F.linear(x, weight, bias)
    return layer


class _Layer:
    """One decoder layer's weights, fused, and its decoding step."""

    def __init__(self, layer: Any, config: Any, batches_in_bf16: bool) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.batches_in_bf16 = batches_in_bf16
        self.input_norm, self.post_norm = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(attention, "head_dim", config.hidden_size // config.num_attention_heads)
        self.scaling = attention.scaling
        self.qk_width = (self.heads + self.kv_heads) * self.head_dim
        self.qkv = _flat(attention.qkv_proj)
        self.o = _flat(attention.o_proj)
        self.gate_up = _flat(mlp.gate_up_proj)
        self.down = _flat(mlp.down_proj)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cached: Any, attend: torch.Tensor | None
    ) -> torch.Tensor:
        rows, dim = hidden.shape[0], self.head_dim
        qkv = self.qkv(self.input_norm(hidden))
        # q and k rotate together: (rows, heads + kv_heads, head_dim) against cos/sin (rows, 1, head_dim).
        qk = qkv[:, : self.qk_width].view(rows, -1, dim)
        qk = qk * cos + qk.roll(dim // 2, dims=-1) * sin
        k = qk[:, self.heads :].unsqueeze(2)
        v = qkv[:, self.qk_width :].view(rows, self.kv_heads, 1, dim)
        keys, values = cached.update(k, v)
        # Attention for one query by hand: torch's CPU scaled_dot_product_attention
        # takes 5x longer than these two matmuls in bf16 (its math fallback).
        # Query head h reads key head h // group, as transformers' repeat_kv has it.
        # A lone row computes it in float32: at its tiny shapes torch's bf16 batched
        # matmul costs about twice float32's (the whole step 6-12% faster, measured).
        # From 8 rows on bf16 is as fast, and reads half the bytes, where the CPU
        # multiplies bf16 natively (bf16_batches_pay).
        dtype = values.dtype if rows > 1 and self.batches_in_bf16 else torch.float32
        grouped = qk[:, : self.heads].view(rows, self.kv_heads, self.heads // self.kv_heads, dim).to(dtype)
        scores = torch.matmul(grouped, keys.to(dtype).transpose(-1, -2)).float() * self.scaling
        if attend is not None:
            scores = scores.masked_fill(~attend, float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1).to(dtype), values.to(dtype))
        hidden = hidden + self.o(out.view(rows, -1).to(hidden.dtype))
        gate, up = self.gate_up(self.post_norm(hidden)).chunk(2, dim=-1)
        return hidden + self.down(F.silu(gate) * up)
