"""The engine's configuration: one frozen object, built by the caller.

The inference package never reads the environment or Django settings; the web
app (``conversations/live/process.py``) and the CLI (``python -m inference``) build an
:class:`EngineConfig` from theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTS = ("auto", "none", "int8", "int4")


def model_name(model: str) -> str:
    """The name an engine serving ``model`` goes by: a ``.gguf`` file's stem, a folder's name, else ``model``.

    Cheap (no torch), so a process that loads no model (a web process of
    worker mode) names the model its workers serve the same way.
    """
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return path.stem
    if path.is_dir():
        return path.name
    return model


@dataclass(frozen=True)
class EngineConfig:
    """What to load and how to serve it.

    ``model`` is the packaged ``smollm2-135m-instruct`` (a GGUF file converted
    once into ``cache_dir``), a local folder, a local ``.gguf`` file or a
    Hugging Face id already in the local cache (never downloaded).
    ``device``/``dtype`` ``auto`` pick cuda, then mps, then cpu; bf16 on CUDA
    that supports it, fp16 on other GPUs, fp32 on CPU.

    Raises InvalidConfig (a ValueError) for an unknown device or dtype or a
    non-positive size.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    # Weight quantization (see quant.py): auto is int4 weights with an int8
    # head and bf16 activations on a CPU serving a 4- or 8-bit GGUF, else none.
    quant: str = "auto"
    cache_dir: Path = Path("var/models")
    max_batch_size: int = 8
    max_queue: int = 32
    default_system_prompt: str = "You are a helpful assistant."
    # Intra-op threads of the scheduler thread; 0 = auto on a CPU: one thread
    # or one per core, whichever decodes faster by the wall clock, re-measured
    # as it runs (threads.py; docs/inference.md, Threads).
    num_threads: int = 0
    # Decode Llama-architecture models with the lean step (fused projections,
    # see lean.py); False keeps the generic transformers forward everywhere.
    lean_decode: bool = True
    # A reader gives up on the scheduler (finish_reason "error") when one of
    # its steps has run this long, or when its thread has died.
    stall_timeout: float = 120.0

    def __post_init__(self) -> None:
        # Accept str paths from callers; the field is always a Path afterwards.
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidConfig("model must be a non-empty string")
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("quant", self.quant, QUANTS)
        _check_positive("max_batch_size", self.max_batch_size)
        _check_positive("max_queue", self.max_queue, allow_zero=True)
        _check_positive("num_threads", self.num_threads, allow_zero=True)
        if not isinstance(self.stall_timeout, (int, float)) or self.stall_timeout <= 0:
            raise InvalidConfig(f"stall_timeout must be a positive number, got {self.stall_timeout!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidConfig(f"{name} {value!r} is not one of {', '.join(choices)}")


def _check_positive(name: str, value: object, allow_zero: bool = False) -> None:
    lowest = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise InvalidConfig(f"{name} must be an integer >= {lowest}, got {value!r}")
