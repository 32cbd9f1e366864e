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

The LM head is int8; where it is tied to the embedding (SmolLM2), the token
lookup reads the same int8 rows (``Int8Embedding``), so the matrix is held
once. Under int4 the head multiplies through oneDNN's int8 x int8 kernel
(``Int8Head``): its prepacked copy is the one in memory, and the rows the
lookup reads are mapped from the cache file. The quantized model's whole
state is cached next to the converted model (see ``cache_path``); a restart
builds the model from it (``load_quantized``) without ever reading the
full-precision weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .capabilities import cpu_has
from .config import QUANTS
from .errors import InvalidConfig
from .lean import fuse_projections

logger = logging.getLogger(__name__)

GROUP_SIZE = 32
ACTIVATION_DTYPE = torch.bfloat16
# The kernels' overloads, resolved once: calling an OpOverloadPacket looks the overload up every time.
_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
_INT8_MM = torch.ops.aten._weight_int8pack_mm.default
# Bump when the cached format changes, so an old cache is not misread.
_CACHE_FORMAT = 3


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

    def flat(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The product for a contiguous bf16 2-D input, straight to the kernel (the lean step's calls)."""
        if self.bias is not None:
            return self
        kernel, packed, scales_and_zeros = _INT4_MM, self.packed, self.scales_and_zeros
        return lambda x: kernel(x, packed, GROUP_SIZE, scales_and_zeros)


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

    def flat(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The product for a contiguous bf16 2-D input, straight to the kernel (the lean step's calls)."""
        if self.bias is not None:
            return self
        kernel, weight, scales = _INT8_MM, self.weight, self.scales
        return lambda x: kernel(x, weight, scales)


class Int8Head(Int8Linear):
    """The LM head: Int8Linear's int8 rows, multiplied by oneDNN's int8 x int8 kernel where torch has it.

    The head is a small model's largest matrix (SmolLM2-135M: 49152 x 576,
    28 MB), read whole at every step. ``_weight_int8pack_mm`` widens its rows
    to bf16 as it goes; oneDNN multiplies int8 by int8 with the activations
    quantized per row at run time (symmetric, 8 bits), which is exact integer
    arithmetic whatever the batch: 1.26 -> 0.73 ms at one row, 3.5 -> 1.3 ms
    at eight (one thread, measured). The kernel reads its own prepacked copy
    of the weights, so the plain rows are left to the token lookup, which
    reads a row at a time: ``map_rows`` maps them from the quantization cache
    instead of holding the matrix twice.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: Any) -> None:
        super().__init__(weight, scales, bias)
        self._packed: torch.Tensor | None = None

    def prepack(self) -> bool:
        """Move the product to oneDNN; False (and unchanged) where this torch has no such kernel,
        or this CPU no VNNI to compute it right (``int8_products_pay``)."""
        if self.bias is not None:
            return False
        if not int8_products_pay():
            logger.info("this CPU has no AVX-512 VNNI: the LM head keeps _weight_int8pack_mm")
            return False
        try:
            self._kernel = torch.ops.onednn.qlinear_pointwise.default
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight, [1, self.in_features])
        except (AttributeError, NotImplementedError, RuntimeError):
            logger.info("oneDNN's int8 kernel is not available: the LM head keeps _weight_int8pack_mm")
            return False
        self._weight_scales = self.scales.float()
        self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        return True

    def map_rows(self, rows: torch.Tensor) -> None:
        """Read the plain rows (the token lookup's) from ``rows``, the same values mapped from a file."""
        if self._packed is None:
            raise ValueError("only a prepacked head's rows can be mapped: the weight-only kernel reads them")
        # The kernels never read these rows again, so a mapping's alignment does not matter.
        self.weight = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            return super().forward(x)
        return self._product(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)

    def flat(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return super().flat() if self._packed is None else self._product

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a 2-D input: each row as int8 codes (offset by 128) times its own scale."""
        x = x.float()
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny) / 127
        codes = (x / scale).round_().add_(128).to(torch.uint8)
        out = self._kernel(
            codes, 1.0, 128, self._packed, self._weight_scales, self._zero_points,
            None, 1.0, 0, torch.float32, "none", [None], "",
        )  # fmt: skip
        return out.mul_(scale)


class Int8Embedding(nn.Module):
    """The token lookup of a model whose embedding and LM head are one matrix: rows of the int8 head.

    Tied weights stay one copy: a bf16 embedding beside the int8 head would
    hold the vocabulary twice (57 MB more for SmolLM2-135M). A looked-up row
    is its int8 codes times its scale, in bf16.
    """

    def __init__(self, head: Int8Linear) -> None:
        super().__init__()
        # Not a submodule: the head owns (and saves) the tensors.
        self._head = (head,)
        self.embedding_dim = head.in_features

    @property
    def weight(self) -> torch.Tensor:
        return self._head[0].weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self._head[0]
        return F.embedding(ids, head.weight).to(ACTIVATION_DTYPE) * head.scales[ids].unsqueeze(-1)


def weight_count(model: Any) -> int:
    """The model's weights, quantized ones included (a shared embedding and head counted once)."""
    count = sum(parameter.numel() for parameter in model.parameters())
    for layer in model.modules():
        if isinstance(layer, (Int4Linear, Int8Linear)):
            count += layer.in_features * layer.out_features
    return count


# -- quantizing a model ------------------------------------------------------------------


def quantize(model: Any, quant: str, cache_file: Path | None = None) -> None:
    """Quantize ``model`` in place (``int8`` or ``int4``); other floats become bf16.

    With ``cache_file``, the whole quantized state (packed layers and the bf16
    rest) is written there, so later starts build the model from it with
    ``load_quantized`` instead of loading and quantizing full-precision weights.
    """
    started = time.monotonic()
    # Fused q/k/v and gate/up are quantized as one matrix each (see lean.py).
    fuse_projections(model)
    for name, linear in _decoder_linears(model):
        bias = linear.bias.detach() if linear.bias is not None else None
        if quant == "int4" and linear.in_features % GROUP_SIZE == 0:
            layer: nn.Module = Int4Linear.from_weight(linear.weight.detach(), bias)
        else:  # int8, or an int4 layer whose width is not a whole number of groups
            layer = Int8Linear.from_weight(linear.weight.detach(), bias)
        _replace(model, name, layer)
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    int8_head = Int8Head.from_weight(head.weight.detach(), getattr(head, "bias", None))
    model.set_output_embeddings(int8_head)
    if tied:
        model.set_input_embeddings(Int8Embedding(int8_head))
    _untie(model.config)
    for parameter in model.parameters():
        # Buffers (rotary frequencies) stay float32: only weights lose precision.
        if parameter.is_floating_point() and parameter.dtype != ACTIVATION_DTYPE:
            parameter.data = parameter.data.to(ACTIVATION_DTYPE)
    if cache_file is not None:
        _write_cache(cache_file, model.state_dict(), {"embedding": "head" if tied else "own"})
    _pack_head(model, quant, cache_file)
    logger.info("quantized to %s in %.1fs", quant, time.monotonic() - started)


def load_quantized(folder: Path, cache_file: Path, quant: str) -> Any:
    """The model of ``folder`` built straight from its quantized state in ``cache_file``, or None.

    The model is made from its config with empty (meta) weights, so no
    full-precision copy is ever read or held: the fused layers become the
    cached int4/int8 ones and every other weight is the cached bf16 tensor.
    None when the file is missing, unreadable or does not fit the config.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    cached = _read_cache(cache_file)
    if cached is None:
        return None
    state, metadata = cached
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    _untie(config)
    # Parameters on the meta device; buffers (rotary frequencies) are computed for real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=ACTIVATION_DTYPE)
    fuse_projections(model)
    try:
        head_name = _head_name(model)
        for name, linear in [*_decoder_linears(model), (head_name, model.get_output_embeddings())]:
            _replace(model, name, _cached_layer(state, name, linear, head=name == head_name))
        if metadata.get("embedding") == "head":
            model.set_input_embeddings(Int8Embedding(model.get_output_embeddings()))
        model.load_state_dict(state, strict=True, assign=True)
    except (KeyError, RuntimeError) as exc:
        logger.warning("ignoring quantization cache %s that does not fit the model: %s", cache_file, exc)
        return None
    _pack_head(model, quant, cache_file)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    return model


def _decoder_linears(model: Any) -> list[tuple[str, nn.Linear]]:
    """The plain linear layers to quantize: every one but the output head."""
    head = model.get_output_embeddings()
    return [(name, layer) for name, layer in model.named_modules() if type(layer) is nn.Linear and layer is not head]


def _head_name(model: Any) -> str:
    head = model.get_output_embeddings()
    return next(name for name, layer in model.named_modules() if layer is head)


def _cached_layer(state: dict[str, torch.Tensor], name: str, linear: nn.Linear, head: bool) -> nn.Module:
    """The quantized layer ``state`` holds for ``name`` (its bias, if any, is loaded afterwards)."""
    bias = linear.bias
    if f"{name}.packed" in state:
        return Int4Linear(state[f"{name}.packed"], state[f"{name}.scales_and_zeros"], linear.in_features, bias)
    return (Int8Head if head else Int8Linear)(state[f"{name}.weight"], state[f"{name}.scales"], bias)


def _pack_head(model: Any, quant: str, cache_file: Path | None) -> None:
    """Under int4, prepack the int8 head for oneDNN and map its plain rows from ``cache_file`` (see Int8Head).

    Without a cache file the rows stay in memory beside the packed copy. The
    int8 scheme keeps the weight-only head: its 8-bit layers leave no room
    for 8-bit activations in the head too (NLL +0.0106 over float32 with
    them, +0.0081 without; the gate allows 0.01). So does a CPU without
    VNNI (``Int8Head.prepack``).
    """
    head = model.get_output_embeddings()
    if quant != "int4" or not head.prepack() or cache_file is None or not cache_file.is_file():
        return
    rows = _mapped(cache_file, f"{_head_name(model)}.weight")
    # _mapped returns int8 only; a tensor of another shape is not this head's rows.
    if rows is not None and rows.shape == head.weight.shape:
        head.map_rows(rows)


def int8_products_pay() -> bool:
    """Whether this CPU has AVX-512 VNNI, where oneDNN's int8 x int8 head is right and fast.

    On a 2-core AVX2 EPYC (no AVX-512) its products came out wrong (21%
    off the weight-only product, tests/inference/test_quant.py) and slower: decode
    steps took 10-12% longer at one and at eight rows, two threads. With
    AVX-512 VNNI the head took 0.73 ms against 1.26 (docs/performance.md).
    """
    return cpu_has("avx512_vnni")


def _untie(config: Any) -> None:
    config.tie_word_embeddings = False
    if hasattr(config, "get_text_config"):
        config.get_text_config().tie_word_embeddings = False


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


def _read_cache(cache_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    if not cache_file.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(cache_file, framework="pt") as file:
            metadata = file.metadata() or {}
            # Copies: tensors mapped from the file can sit at addresses the kernels'
            # vector loads do not expect (a segmentation fault, not an error).
            return {name: file.get_tensor(name).clone() for name in file.keys()}, metadata
    except (OSError, ValueError, RuntimeError):
        logger.warning("ignoring unreadable quantization cache %s", cache_file, exc_info=True)
        return None


def _mapped(cache_file: Path, name: str) -> torch.Tensor | None:
    """The int8 tensor ``name`` of ``cache_file`` mapped from the file instead of read, or None.

    Pages come in as they are read, and being the file's own (never
    written), the kernel can drop them again under memory pressure. Parses
    the safetensors layout: an 8-byte little-endian header length, a JSON
    header giving each tensor's dtype, shape and byte range, then the data.
    """
    try:
        with open(cache_file, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            entry = json.loads(file.read(length))[name]
            # Private: torch wants a writable buffer; nothing writes, and a write would not reach the file.
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        begin, end = entry["data_offsets"]
        if entry["dtype"] != "I8":
            raise ValueError(f"dtype {entry['dtype']}")
        return torch.frombuffer(mapped, dtype=torch.int8, count=end - begin, offset=8 + length + begin).view(
            entry["shape"]
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        logger.warning("not mapping %s from %s: %s", name, cache_file, exc)
        return None


def _write_cache(cache_file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically (a scratch file renamed into place), so a crash never leaves half a cache."""
    from safetensors.torch import save_file

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    scratch = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, scratch, metadata=metadata)
        os.replace(scratch, cache_file)
    except OSError:
        logger.warning("could not cache the quantized weights in %s", cache_file, exc_info=True)
    finally:
        scratch.unlink(missing_ok=True)
