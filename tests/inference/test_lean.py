"""The lean decoding step (inference/lean.py) against the generic transformers forward, on the tiny model."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import DynamicCache

from inference import GenerationParams, Request, build_engine
from inference import lean as lean_module
from inference.lean import LeanDecoder, bf16_batches_pay
from inference.quant import quantize
from tests.inference_fixtures import load_tiny, tiny_config


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def requests() -> list[Request]:
    # Different prompt lengths: rows are left-padded and the mask matters.
    prompts = ["Hi", "Tell me a long story about a lighthouse keeper and the sea", "What is two plus two?"]
    return [Request(messages=user(p), params=GenerationParams(temperature=0, max_new_tokens=20)) for p in prompts]


# A lone row attends in float32; several rows in bf16 only where the CPU multiplies it natively (lean.py).
@pytest.mark.parametrize(("rows", "bf16_batches"), [(1, False), (2, True), (2, False)])
@pytest.mark.parametrize("scheme", ["none", "int4"])
def test_a_lean_step_computes_the_generic_forwards_logits(tiny_model_dir, monkeypatch, scheme, rows, bf16_batches):
    monkeypatch.setattr(lean_module, "bf16_batches_pay", lambda device: bf16_batches)
    model, _ = load_tiny(tiny_model_dir)
    if scheme != "none":
        quantize(model, scheme)
    lean = LeanDecoder.for_model(model)
    assert lean is not None
    assert lean.layers[0].batches_in_bf16 is bf16_batches
    prompt = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])[:rows]
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])[:rows]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        caches = [DynamicCache(config=model.config) for _ in range(2)]
        for cache in caches:
            model(input_ids=prompt, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        token, position = torch.tensor([[13], [14]])[:rows], torch.tensor([[5], [3]])[:rows]
        full_mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype)], dim=1)
        generic = (
            model(
                input_ids=token,
                attention_mask=full_mask,
                position_ids=position,
                past_key_values=caches[0],
                use_cache=True,
            )
            .logits[:, -1]
            .float()
        )
        with _MatmulDtypes() as attention:
            got = lean.step(token, position, caches[1], full_mask)
    torch.testing.assert_close(got, generic, atol=2e-2 if scheme == "int4" else 1e-4, rtol=1e-3)
    assert torch.equal(got.argmax(-1), generic.argmax(-1))
    # The int4 model's cache is bf16; the tiny model's own is float32 either way.
    in_bf16 = scheme == "int4" and rows > 1 and bf16_batches
    assert attention.dtypes == {torch.bfloat16 if in_bf16 else torch.float32}


class _MatmulDtypes(TorchFunctionMode):
    """Records the dtype of every torch.matmul (the lean step's attention) run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.matmul:
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_the_engine_decodes_the_same_text_with_and_without_the_lean_step(tiny_model_dir):
    engines = []
    try:
        for lean in (True, False):
            model, tokenizer = load_tiny(tiny_model_dir)
            engines.append(build_engine(model, tokenizer, tiny_config(lean_decode=lean), model_name="tiny-llama"))
        lean_engine, generic_engine = engines
        assert lean_engine.scheduler.lean is not None and generic_engine.scheduler.lean is None
        lean_texts = [r.text for r in lean_engine.generate_batch(requests())]
        assert lean_texts == [r.text for r in generic_engine.generate_batch(requests())]
        assert lean_engine.stats.max_rows == 3
    finally:
        for engine in engines:
            engine.close()


def test_batches_attend_in_bf16_only_where_the_device_multiplies_it_natively(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert not bf16_batches_pay(torch.device("cpu"))
    assert bf16_batches_pay(torch.device("cuda"))
    for native in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda native=native: {"avx2": True, native: True})
        assert bf16_batches_pay(torch.device("cpu"))


def test_other_architectures_keep_the_generic_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny_gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=64))
    assert LeanDecoder.for_model(tiny_gpt2) is None
