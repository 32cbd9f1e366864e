"""batch_prompts: run a file of prompts through the model, one conversation each.

The work lives in conversations/batch.py; this command parses options, wires
the output streams, the progress bar and Ctrl-C, and sets the exit status.
Each prompt's reply is an ordinary turn on this process's runner: the
model loaded here in local mode, the inference workers in worker mode.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from conversations import accounts, batch
from conversations.endpoints import catalog
from conversations.live import process, state
from conversations.review import quotas
from inference import GenerationParams, InvalidParams


class _RawStream:
    """What tqdm writes to: OutputWrapper.write would end every "\\r" redraw
    with a newline and colour it as an error."""

    def __init__(self, wrapper) -> None:
        self.wrapper = wrapper
        # tqdm draws with block characters only when it knows the encoding.
        self.encoding = getattr(wrapper, "encoding", None)

    def write(self, text: str) -> None:
        self.wrapper.write(text, style_func=lambda x: x, ending="")

    def flush(self) -> None:
        self.wrapper.flush()


class Command(BaseCommand):
    help = (
        "Run a file of prompts through the model in batches; each becomes a source=batch "
        "conversation. INPUT is a .txt file (one prompt a line), a .jsonl file "
        '({"prompt": ..., "system": ..., "params": {...}} a line) or - for standard input. '
        "Writes one JSON line a prompt, in input order."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", metavar="INPUT", help="a .txt or .jsonl file, or - for standard input")
        parser.add_argument(
            "--output", "-o", metavar="OUT.jsonl", help="write the JSON lines here instead of standard output"
        )
        parser.add_argument(
            "--format",
            dest="input_format",
            choices=batch.FORMATS,
            default="auto",
            help="input format; auto: by extension (.txt, .jsonl), else JSONL "
            "if the first non-blank line starts with '{'",
        )
        parser.add_argument(
            "--user", default="batch", help="owner of the conversations, created if missing (default: batch)"
        )
        parser.add_argument(
            "--system", default="", metavar="TEXT", help='system prompt for every prompt (a JSONL "system" replaces it)'
        )
        parser.add_argument("--temperature", type=float, metavar="T", help="0-2, 0 = greedy")
        parser.add_argument("--top-p", type=float, metavar="P", help="(0, 1]")
        parser.add_argument("--max-new-tokens", type=int, metavar="N", help="1-4096")
        parser.add_argument("--repetition-penalty", type=float, metavar="R", help="1-2")
        parser.add_argument(
            "--batch-size", type=int, default=8, metavar="B", help="prompts on the model at once (default: 8)"
        )
        parser.add_argument("--model", metavar="ID", help="the model to use (default: the site's default model)")
        parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    def handle(
        self,
        *args,
        path: str,
        output: str | None,
        input_format: str,
        user: str,
        system: str,
        temperature: float | None,
        top_p: float | None,
        max_new_tokens: int | None,
        repetition_penalty: float | None,
        batch_size: int,
        model: str | None,
        quiet: bool,
        **options,
    ) -> None:
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, got {batch_size}")
        base = self.base_params(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
        )
        lines = self.read_lines(path)
        fmt = batch.detect_format(path, lines) if input_format == "auto" else input_format
        prompts, bad = batch.read_prompts(lines, fmt, base, system)
        owner = batch.batch_user(user)
        if accounts.is_pending(owner):
            raise CommandError(f"{owner.get_username()!r} is waiting for approval (the admin's accounts waiting).")
        try:
            quotas.check(owner.pk)
        except quotas.QuotaExceeded as exc:
            raise CommandError(batch.describe_quota(owner, exc.used, exc.limit)) from None

        live = self.ready()
        model = self.model_for(owner, model, live)
        if model == live.models.local_model and live.engine is not None:
            prompts, too_long = batch.measure(prompts, live.engine)
            bad = sorted(bad + too_long, key=lambda b: b.line)
        for bad_line in bad:
            self.stderr.write(str(bad_line))

        err = _RawStream(self.stderr)
        with (
            self.output_writer(output) as write,
            self.progress_bar(len(prompts), quiet, err) as bar,
            self.stop_on_sigint() as stop,
        ):
            runner = batch.BatchRunner(
                user=owner,
                model=model,
                write=write,
                report=lambda message: bar.write(message, file=err),
                batch_size=batch_size,
                progress=bar.update,
                stop=stop,
            )
            # Database calls of the turns run back on this thread (thread-sensitive), on its connection.
            summary = async_to_sync(runner.run)(batch.plan(prompts))

        self.stderr.write(summary.describe(bad_lines=len(bad)), style_func=lambda x: x)
        if summary.aborted:
            raise CommandError(
                f"the model stopped ({summary.aborted}): stopped after {summary.done} of {summary.total} prompts"
            )
        if summary.quota:
            raise CommandError(f"stopped after {summary.done} of {summary.total} prompts: {summary.quota}")
        if summary.interrupted:
            raise CommandError(f"interrupted: stopped after {summary.done} of {summary.total} prompts", returncode=130)
        failed = summary.failed + len(bad)
        if failed:
            raise CommandError(f"{failed} of {summary.total + len(bad)} prompts failed (reported above)")

    def base_params(self, **options) -> GenerationParams:
        """The parameters every prompt starts from; a bad option is fatal."""
        given = {name: value for name, value in options.items() if value is not None}
        try:
            return GenerationParams.from_dict(given)
        except InvalidParams as exc:
            raise CommandError(f"bad parameters: {exc}") from None

    def read_lines(self, path: str) -> list[str]:
        try:
            return batch.read_input(path, sys.stdin)
        except FileNotFoundError:
            raise CommandError(f"input file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise CommandError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None

    def model_for(self, owner, model: str | None, live: state.Live) -> str:
        """The model of the run: `--model` if the user may use it, else the default; fatal otherwise."""
        try:
            return catalog.resolve(owner, model, live.models)
        except catalog.UnknownModel as exc:
            raise CommandError(str(exc)) from None

    def ready(self) -> state.Live:
        """This process's live state, its model loaded in local mode."""
        try:
            return process.ready()
        except process.LOAD_ERRORS as exc:
            raise CommandError(f"cannot load the model: {exc}") from None

    @contextmanager
    def output_writer(self, path: str | None):
        """A function writing one output line, flushed at once so a crash
        keeps every line that finished."""
        if path is None:

            def write(line: str) -> None:
                self.stdout.write(line)
                self.stdout.flush()

            yield write
            return
        try:
            handle = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
        with handle:

            def write(line: str) -> None:
                handle.write(line + "\n")
                handle.flush()

            yield write

    @contextmanager
    def progress_bar(self, total: int, quiet: bool, err: _RawStream):
        """A tqdm bar (rate, ETA) on stderr, off when quiet or stderr is not a terminal."""
        with tqdm(
            total=total, unit="prompt", file=err, dynamic_ncols=True, disable=quiet or not self.stderr.isatty()
        ) as bar:
            yield bar

    @contextmanager
    def stop_on_sigint(self):
        """Ctrl-C sets an event the runner checks before it starts a prompt, so the
        prompts on the model finish and are stored. A second Ctrl-C aborts at once."""
        stop = threading.Event()
        if threading.current_thread() is not threading.main_thread():
            yield stop  # signal handlers can only be installed from the main thread
            return

        previous = signal.getsignal(signal.SIGINT)

        def on_signal(signum, frame) -> None:
            stop.set()
            signal.signal(signal.SIGINT, previous)
            self.stderr.write("\nstopping once the prompts on the model are done (Ctrl-C again to abort)")

        signal.signal(signal.SIGINT, on_signal)
        try:
            yield stop
        finally:
            signal.signal(signal.SIGINT, previous)
