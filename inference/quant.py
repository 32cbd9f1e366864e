"""Weight-only quantization for the CPU: int4 or int8 matrices, bf16 activations.

Decoding one token reads every weight once, so on a CPU its speed is set by
how many bytes the weights take: fp32 reads 4 bytes a weight, int4 half a
byte. torch has CPU kernels for both (``_weight_int4pack_mm_for_cpu``,
``_weight_int8pack_mm``); they want bf16 activations (with fp32 ones they are
10-50x slower), so everything that stays dense is cast to bf16.

* ``int4``: every linear layer of the decoder in 4 bits, groups of 32 input
  columns, each group with its own scale and minimum (min/max, asymmetric),
  the same scheme as llama.cpp's Q4_1. For the packaged Q4_1 GGUF this
  recovers the file's own codes exactly: its dequantized weights hold each
  block's minimum (code 0) and maximum (code 15), so min/max over the same 32
  columns finds the same scale and minimum. The LM head is int8 (in 4 bits it
  costs 0.05 nats a token, five times the quality gate's allowance).
* ``int8``: every linear layer and the LM head in 8 bits, one scale per output
  row (symmetric).

The LM head is untied from the embedding: the lookup stays bf16, the head
becomes int8. Quantized tensors are cached next to the converted model (see
``cache_path``), so a restart skips the quantization.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import QUANTS
from .errors import InvalidConfig
from .lean import fuse_projections

logger = logging.getLogger(__name__)

GROUP_SIZE = 32
ACTIVATION_DTYPE = torch.bfloat16
# Bump when the cached format changes, so an old cache is not misread.
_CACHE_FORMAT = 2


def resolve_quant(name: str, device: torch.device, from_low_bit_gguf: bool) -> str:
    """The quantization to run: ``none``, ``int8`` or ``int4``.

    ``auto`` picks int4 on a CPU when the weights come from a 4- or 8-bit GGUF
    (they already carry that precision, so nothing more is lost), else none
    (the dtype setting rules, e.g. bf16 on CUDA). Raises InvalidConfig for an
    unknown name, or int8/int4 on a device without these kernels.
    """
    if name not in QUANTS:
        raise InvalidConfig(f"quant {name!r} is not one of {', '.join(QUANTS)}")
    if name == "auto":
        return "int4" if device.type == "cpu" and from_low_bit_gguf else "none"
    if name != "none" and device.type != "cpu":
        raise InvalidConfig(f"quant {name!r} runs on the CPU only; use none (bf16) on {device.type}")
    return name


# -- the quantized layers ---------------------------------------------------------


def minmax_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit codes of ``weight`` (out, in) by min/max over groups of GROUP_SIZE input columns.

    Returns (codes int32 (out, in), scale, minimum (both float32, (out, in / GROUP_SIZE))):
    ``codes * scale + minimum`` approximates the weight, group by group.
    """
    rows, columns = weight.shape
    groups = weight.float().reshape(rows, columns // GROUP_SIZE, GROUP_SIZE)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    codes = ((groups - low.unsqueeze(-1)) / scale.unsqueeze(-1)).round().clamp(0, 15).to(torch.int32)
    return codes.reshape(rows, columns), scale, low


class Int4Linear(nn.Module):
    """A linear layer with int4 weights in groups of ``GROUP_SIZE`` (bf16 in, bf16 out)."""

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int, bias: Any) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = scales_and_zeros.shape[1]
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = None if bias is None else nn.Parameter(bias.to(ACTIVATION_DTYPE), requires_grad=False)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: Any = None) -> Int4Linear:
        """Quantize ``weight`` (out, in), min/max per group of GROUP_SIZE input columns."""
        rows, columns = weight.shape
        codes, scale, low = minmax_int4(weight)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        # The kernel computes (code - 8) * scale + zero, so zero = minimum + 8 * scale.
        scales_and_zeros = torch.stack([scale.t(), (low + 8 * scale).t()], dim=-1).to(ACTIVATION_DTYPE).contiguous()
        return cls(packed, scales_and_zeros, columns, bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer computes with (for tests and checks)."""
        eye = torch.eye(self.in_features, dtype=ACTIVATION_DTYPE)
        ones = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP_SIZE, self.scales_and_zeros)
        return ones.float().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(ACTIVATION_DTYPE).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP_SIZE, self.scales_and_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, one scale per output row (bf16 in, bf16 out)."""

    weight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: Any) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.to(ACTIVATION_DTYPE), requires_grad=False)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: Any = None) -> Int8Linear:
        """Quantize ``weight`` (out, in) symmetrically, one scale per output row."""
        weight = weight.float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        codes = (weight / scales.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
        return cls(codes, scales.to(ACTIVATION_DTYPE), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(ACTIVATION_DTYPE).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def weight_count(model: Any) -> int:
    """The model's weights, quantized ones included (a head copied from the embedding counted once)."""
    count = sum(parameter.numel() for parameter in model.parameters())
    for layer in model.modules():
        if isinstance(layer, (Int4Linear, Int8Linear)):
            count += layer.in_features * layer.out_features
    if getattr(model, "head_is_a_copy", False):
        head = model.get_output_embeddings()
        count -= head.in_features * head.out_features
    return count


# -- quantizing a model ------------------------------------------------------------------


def quantize(model: Any, quant: str, cache_file: Path | None = None) -> None:
    """Quantize ``model`` in place (``int8`` or ``int4``); other floats become bf16.

    With ``cache_file``, quantized tensors are read from it when it exists and
    written to it otherwise, so only the first start pays for quantizing.
    """
    started = time.monotonic()
    # Fused q/k/v and gate/up are quantized as one matrix each (see lean.py).
    fuse_projections(model)
    cached = _read_cache(cache_file)
    tensors: dict[str, torch.Tensor] = {}
    for name, linear in _decoder_linears(model):
        layer = _quantized(linear, quant, cached, name, tensors)
        _replace(model, name, layer)
    head = model.get_output_embeddings()
    # Counted once in parameter_count, as before untying.
    model.head_is_a_copy = head.weight is model.get_input_embeddings().weight
    head_layer = _int8_from(head.weight.detach(), getattr(head, "bias", None), cached, "lm_head", tensors)
    # The head gets its own int8 copy; the embedding keeps its (now bf16) weight.
    model.set_output_embeddings(head_layer)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    for parameter in model.parameters():
        # Buffers (rotary frequencies) stay float32: only weights lose precision.
        if parameter.is_floating_point() and parameter.dtype != ACTIVATION_DTYPE:
            parameter.data = parameter.data.to(ACTIVATION_DTYPE)
    if cache_file is not None and cached is None:
        _write_cache(cache_file, tensors)
    logger.info("quantized to %s in %.1fs%s", quant, time.monotonic() - started, " (cached)" if cached else "")


def _decoder_linears(model: Any) -> list[tuple[str, nn.Linear]]:
    """The plain linear layers to quantize: every one but the output head."""
    head = model.get_output_embeddings()
    return [(name, layer) for name, layer in model.named_modules() if type(layer) is nn.Linear and layer is not head]


def _quantized(linear: nn.Linear, quant: str, cached: Any, name: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    bias = linear.bias.detach() if linear.bias is not None else None
    if quant == "int4" and linear.in_features % GROUP_SIZE == 0:
        if cached is not None:
            return Int4Linear(cached[f"{name}.packed"], cached[f"{name}.scales_and_zeros"], linear.in_features, bias)
        layer = Int4Linear.from_weight(linear.weight.detach(), bias)
        tensors[f"{name}.packed"], tensors[f"{name}.scales_and_zeros"] = layer.packed, layer.scales_and_zeros
        return layer
    # int8, or an int4 layer whose width is not a whole number of groups.
    return _int8_from(linear.weight.detach(), bias, cached, name, tensors)


def _int8_from(weight: torch.Tensor, bias: Any, cached: Any, name: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    if cached is not None and f"{name}.weight" in cached:
        return Int8Linear(cached[f"{name}.weight"], cached[f"{name}.scales"], bias)
    layer = Int8Linear.from_weight(weight, bias)
    tensors[f"{name}.weight"], tensors[f"{name}.scales"] = layer.weight, layer.scales
    return layer


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layer)


# -- the cache ---------------------------------------------------------------------------


def cache_path(model_folder: Path, cache_dir: Path, quant: str) -> Path:
    """Where the quantized tensors of ``model_folder`` are kept.

    The key covers the weights' files (names, sizes, times), the scheme and the
    torch version (the int4 packing is torch's own layout).
    """
    files = sorted(model_folder.glob("*.safetensors")) + sorted(model_folder.glob("*.bin"))
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    parts += [quant, str(GROUP_SIZE), str(_CACHE_FORMAT), torch.__version__]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_folder.name.lower())
    return Path(cache_dir) / f"{slug}-{quant}-{key}.safetensors"


def _read_cache(cache_file: Path | None) -> dict[str, torch.Tensor] | None:
    if cache_file is None or not cache_file.is_file():
        return None
    from safetensors.torch import load_file

    try:
        # Copies: tensors read from the file can sit at addresses the kernels'
        # vector loads do not expect (a segmentation fault, not an error).
        return {name: tensor.clone() for name, tensor in load_file(cache_file).items()}
    except (OSError, ValueError, RuntimeError):
        logger.warning("ignoring unreadable quantization cache %s", cache_file, exc_info=True)
        return None


def _write_cache(cache_file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically (a scratch file renamed into place), so a crash never leaves half a cache."""
    from safetensors.torch import save_file

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    scratch = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, scratch)
        os.replace(scratch, cache_file)
    except OSError:
        logger.warning("could not cache the quantized weights in %s", cache_file, exc_info=True)
    finally:
        scratch.unlink(missing_ok=True)
