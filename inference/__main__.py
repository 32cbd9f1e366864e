"""Stream one reply from the local model to the terminal.

    python -m inference "What is the capital of France?" --temperature 0

The CLI is a boundary, like the web app's settings: it alone reads the
environment (CHAT_MODEL, CHAT_DEVICE, CHAT_DTYPE, CHAT_MODEL_CACHE give the
defaults) and builds the EngineConfig the library takes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from .config import DEVICES, DTYPES, QUANTS, EngineConfig
from .errors import InferenceError
from .params import GenerationParams
from .streaming import Chunk, Finished, Request, Result, Started

logger = logging.getLogger(__name__)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser, its defaults taken from ``environ``'s CHAT_* variables."""
    defaults = EngineConfig()
    base = GenerationParams()
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description="Stream one reply from the local language model to the terminal.",
        epilog="Defaults for --model, --device, --dtype, --quant and --cache-dir come from CHAT_MODEL, "
        "CHAT_DEVICE, CHAT_DTYPE, CHAT_QUANT and CHAT_MODEL_CACHE when set. The summary line names "
        "the quantization that ran.",
    )
    parser.add_argument("prompt", help='the user message ("-" reads it from standard input)')
    parser.add_argument("--system", default=None, help=f"system prompt (default: {defaults.default_system_prompt!r})")
    parser.add_argument(
        "--temperature", type=float, default=base.temperature, help="0..2, 0 = greedy (default %(default)s)"
    )
    parser.add_argument("--top-p", type=float, default=base.top_p, help="(0, 1] (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=base.max_new_tokens, help="1..4096 (default %(default)s)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=base.repetition_penalty, help="1..2 (default %(default)s)"
    )
    parser.add_argument(
        "--model",
        default=environ.get("CHAT_MODEL", defaults.model),
        help="packaged model name, local folder, .gguf file or cached hub id (default %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=environ.get("CHAT_DEVICE", defaults.device),
        help=f"{', '.join(DEVICES)} (default %(default)s)",
    )
    parser.add_argument(
        "--dtype", default=environ.get("CHAT_DTYPE", defaults.dtype), help=f"{', '.join(DTYPES)} (default %(default)s)"
    )
    parser.add_argument(
        "--quant",
        default=environ.get("CHAT_QUANT", defaults.quant),
        help=f"{', '.join(QUANTS)}: auto runs int4 weights with an int8 LM head and bf16 activations on a CPU "
        "serving a 4- or 8-bit GGUF (the packaged model), else none (default %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        default=environ.get("CHAT_MODEL_CACHE", str(defaults.cache_dir)),
        help="where converted models are kept (default %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads, 0 = auto (measured)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log loading and timing details")
    return parser


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None
) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 generation failed, 2 bad input or model)."""
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    args = build_parser(environ).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    try:
        params = GenerationParams(
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            repetition_penalty=args.repetition_penalty,
        )
        config = EngineConfig(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            quant=args.quant,
            cache_dir=args.cache_dir,
            num_threads=args.threads,
        )
        from .engine import load_engine  # torch and transformers load only once arguments are valid

        engine = load_engine(config)
    except InferenceError as exc:
        print(f"inference: {exc}", file=sys.stderr)
        return 2
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}
    ]
    try:
        result = asyncio.run(stream_reply(engine, Request(messages=messages, params=params), stdout))
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except InferenceError as exc:
        print(f"inference: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    print(f"{_summary(result)} [{engine.info.dtype}, quant {engine.info.quant}]", file=sys.stderr)
    return 1 if result.finish_reason == "error" else 0


async def stream_reply(engine: Any, request: Request, stdout: TextIO) -> Result:
    """Write the reply to ``stdout`` as it arrives; returns the final Result."""
    result = None
    async for event in engine.stream(request):
        if isinstance(event, Chunk):
            stdout.write(event.text)
            stdout.flush()
        elif isinstance(event, Started) and event.dropped_turns:
            logger.info("%d earlier turns were left out to fit the context", event.dropped_turns)
        elif isinstance(event, Finished):
            result = event.result
    stdout.write("\n")
    if result is None:
        raise InferenceError("the reply ended without a Finished event")
    return result


def _summary(result: Result) -> str:
    line = (
        f"[{result.finish_reason}: {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens, "
        f"first token {result.ttft_ms} ms, {result.tokens_per_s:.1f} tokens/s]"
    )
    return f"{line} {result.error}" if result.error else line


if __name__ == "__main__":
    sys.exit(main())
