"""The batch_prompts command, on the tiny model of the real architecture
(and once on the real default model). Its replies are ordinary turns on the
local runner, so these also check that they batch on the engine. The database
tests are transactional: the turns' database work goes through Channels,
which closes a connection that is inside a transaction."""

import io
import json
import os
import signal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from conversations import batch
from conversations.live import state
from conversations.models import Conversation, Message
from inference import EngineConfig, GenerationParams, load_engine
from tests.conftest import serving

MODEL_CACHE = Path(__file__).resolve().parents[1] / "var" / "models"

# Prompts of clearly different lengths, so length sorting reorders them.
PROMPTS = [
    "Tell me a very long story about a dragon who lived in a cave by the sea and collected shells",
    "Hi",
    "What is the capital of France?",
    "Name three colours of the rainbow, please",
    "Why?",
]


class Streams:
    """The engine's streams as the turns open them: the prompts in the order they reached the
    model, and the most that were open at once. The real stream still runs."""

    def __init__(self, engine, monkeypatch) -> None:
        self.prompts: list[str] = []
        self.open = self.most_open = 0
        real = engine.stream

        async def recording(request):
            self.prompts.append(request.messages[-1]["content"])
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                async for event in real(request):
                    yield event
            finally:
                self.open -= 1

        monkeypatch.setattr(engine, "stream", recording)


@pytest.fixture
def fresh_engine(make_engine):
    """A tiny engine of this test's own (its stats start at zero), serving this process."""
    engine = make_engine(max_batch_size=4)
    with state.swapped(serving(engine)):
        yield engine


def run(*args, **options):
    """Run the command; returns (stdout, stderr, the CommandError or None)."""
    out, err = io.StringIO(), io.StringIO()
    options.setdefault("max_new_tokens", 4)
    try:
        call_command("batch_prompts", *args, stdout=out, stderr=err, **options)
        error = None
    except CommandError as exc:
        error = exc
    return out.getvalue(), err.getvalue(), error


def records(text):
    return [json.loads(line) for line in text.splitlines()]


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.django_db(transaction=True)
def test_it_runs_a_txt_file(engine, tmp_path):
    path = write(tmp_path, "prompts.txt", ["Hello there", "", "   ", "What is 2 + 2?"])
    out, err, error = run(path, temperature=0)

    assert error is None, err
    rows = records(out)
    assert [r["line"] for r in rows] == [1, 4]
    assert [r["prompt"] for r in rows] == ["Hello there", "What is 2 + 2?"]
    for row in rows:
        assert set(row) >= {
            "line",
            "prompt",
            "reply",
            "finish_reason",
            "conversation_id",
            "prompt_tokens",
            "completion_tokens",
            "duration_ms",
        }
        assert row["finish_reason"] in ("stop", "length")
        assert row["prompt_tokens"] > 0
    assert "2 of 2 prompts done, 0 failed" in err


@pytest.mark.django_db(transaction=True)
def test_it_stores_batch_conversations_for_the_user(engine, tmp_path, alice):
    path = write(tmp_path, "prompts.txt", ["What is the capital of France?"])
    out, err, error = run(path, user="alice", system="Be brief.", temperature=0)

    assert error is None, err
    [row] = records(out)
    convo = Conversation.objects.get(id=row["conversation_id"])
    assert (convo.user, convo.source) == (alice, Conversation.Source.BATCH)
    assert convo.title == "What is the capital of France?"
    assert convo.system_prompt == "Be brief."
    assert (convo.temperature, convo.max_new_tokens) == (0, 4)
    assert convo.model_name == engine.info.model_name
    user_msg, reply = convo.messages.all()
    assert (user_msg.role, user_msg.content) == ("user", "What is the capital of France?")
    assert reply.role == "assistant"
    assert reply.content == row["reply"]
    assert reply.status == Message.Status.COMPLETE
    assert reply.finish_reason == row["finish_reason"]
    assert reply.completion_tokens == row["completion_tokens"] > 0
    assert reply.prompt_tokens == row["prompt_tokens"]
    assert reply.duration_ms is not None and reply.ttft_ms is not None
    assert reply.model_name == engine.info.model_name


@pytest.mark.django_db(transaction=True)
def test_it_creates_the_user_without_a_usable_password(engine, tmp_path):
    path = write(tmp_path, "prompts.txt", ["Hi"])
    _, err, error = run(path)

    assert error is None, err
    user = get_user_model().objects.get(username="batch")
    assert not user.has_usable_password()
    assert not user.is_staff
    assert Conversation.objects.get().user == user


@pytest.mark.django_db(transaction=True)
def test_it_reads_jsonl_with_system_and_params(engine, tmp_path):
    path = write(
        tmp_path,
        "prompts.jsonl",
        [
            json.dumps({"prompt": "Hi"}),
            "",
            json.dumps(
                {
                    "prompt": "Tell me a joke",
                    "system": "You are funny.",
                    "params": {"max_new_tokens": 2, "temperature": 0},
                }
            ),
        ],
    )
    out, err, error = run(path, system="Default system.", max_new_tokens=3)

    assert error is None, err
    first, second = records(out)
    assert (first["line"], second["line"]) == (1, 3)
    assert second["completion_tokens"] <= 2
    convo = Conversation.objects.get(id=second["conversation_id"])
    assert convo.system_prompt == "You are funny."
    assert (convo.max_new_tokens, convo.temperature) == (2, 0)
    convo = Conversation.objects.get(id=first["conversation_id"])
    assert convo.system_prompt == "Default system."
    assert convo.max_new_tokens == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "text",
    [
        "Hello\n\nHow are you?\n",
        '{"prompt": "Hello"}\n\n{"prompt": "How are you?"}\n',
    ],
)
def test_it_reads_standard_input(engine, monkeypatch, text):
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    out, err, error = run("-")

    assert error is None, err
    assert [(r["line"], r["prompt"]) for r in records(out)] == [(1, "Hello"), (3, "How are you?")]


@pytest.mark.django_db(transaction=True)
def test_it_writes_the_output_file(engine, tmp_path):
    path = write(tmp_path, "prompts.txt", PROMPTS[:2])
    output = tmp_path / "out.jsonl"
    out, err, error = run(path, output=str(output))

    assert error is None, err
    assert out == ""
    assert [r["prompt"] for r in records(output.read_text(encoding="utf-8"))] == PROMPTS[:2]


class Terminal(io.StringIO):
    """Standard error as if it were a terminal, so the progress bar shows."""

    def isatty(self):
        return True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("quiet", [False, True])
def test_it_shows_a_progress_bar_on_a_terminal(engine, tmp_path, quiet):
    path = write(tmp_path, "prompts.txt", PROMPTS)
    err = Terminal()
    call_command("batch_prompts", path, batch_size=2, max_new_tokens=2, quiet=quiet, stdout=io.StringIO(), stderr=err)

    shown = err.getvalue()
    assert ("5/5" in shown and "prompt/s" in shown) is not quiet
    assert "5 of 5 prompts done" in shown


@pytest.mark.django_db(transaction=True)
def test_it_keeps_input_order_though_prompts_run_length_sorted(engine, monkeypatch, tmp_path):
    streams = Streams(engine, monkeypatch)
    path = write(tmp_path, "prompts.txt", PROMPTS)
    out, err, error = run(path, batch_size=2)

    assert error is None, err
    assert [r["prompt"] for r in records(out)] == PROMPTS
    assert [r["line"] for r in records(out)] == [1, 2, 3, 4, 5]
    ran = streams.prompts
    assert sorted(ran) == sorted(PROMPTS)
    assert ran != PROMPTS
    lengths = [engine.count_tokens([{"role": "user", "content": p}]) for p in ran]
    assert lengths == sorted(lengths)


@pytest.mark.django_db(transaction=True)
def test_it_keeps_batch_size_turns_on_the_model_and_they_decode_together(fresh_engine, monkeypatch, tmp_path):
    streams = Streams(fresh_engine, monkeypatch)
    path = write(tmp_path, "prompts.txt", PROMPTS)
    _, err, error = run(path, batch_size=3, max_new_tokens=16)

    assert error is None, err
    assert streams.most_open == 3
    assert fresh_engine.stats.max_rows == 3  # rows of different turns in one decoding step
    assert Conversation.objects.filter(source="batch").count() == 5


@pytest.mark.django_db(transaction=True)
def test_greedy_output_in_a_batch_equals_the_prompt_alone(engine, tmp_path):
    path = write(tmp_path, "batch.txt", PROMPTS)
    out, err, error = run(path, temperature=0, max_new_tokens=8, batch_size=8)
    assert error is None, err
    batched = {r["prompt"]: r["reply"] for r in records(out)}

    for prompt in (PROMPTS[0], PROMPTS[1]):
        path = write(tmp_path, "alone.txt", [prompt])
        out, err, error = run(path, temperature=0, max_new_tokens=8, batch_size=1)
        assert error is None, err
        [alone] = records(out)
        assert alone["reply"] == batched[prompt]


@pytest.mark.django_db(transaction=True)
def test_it_reports_bad_lines_and_runs_the_rest(engine, tmp_path):
    too_long = " ".join(["word"] * (engine.info.context_length + 10))
    path = write(
        tmp_path,
        "prompts.jsonl",
        [
            json.dumps({"prompt": "Good one"}),
            '{"prompt": "broken',
            json.dumps({"system": "no prompt"}),
            json.dumps({"prompt": 42}),
            json.dumps({"prompt": "   "}),
            json.dumps({"prompt": "Hot", "params": {"temperature": 5}}),
            json.dumps({"prompt": too_long}),
            json.dumps({"prompt": "Another good one"}),
        ],
    )
    out, err, error = run(path)

    assert error is not None and error.returncode != 0
    assert "6 of 8 prompts failed" in str(error)
    assert [r["line"] for r in records(out)] == [1, 8]
    assert Conversation.objects.count() == 2
    lines = err.splitlines()
    assert any(line.startswith("line 2: not valid JSON") for line in lines)
    assert 'line 3: missing "prompt"' in lines
    assert 'line 4: "prompt" must be a string' in lines
    assert 'line 5: "prompt" is empty' in lines
    assert any(line.startswith("line 6: bad params:") and "temperature" in line for line in lines)
    assert any(line.startswith("line 7: prompt is too long") for line in lines)


@pytest.mark.django_db(transaction=True)
def test_it_stops_after_the_prompts_on_the_model_on_sigint(engine, monkeypatch, tmp_path):
    real = engine.stream
    calls = []

    async def interrupted(request):
        calls.append(request)
        if len(calls) == 1:
            # A real Ctrl-C arriving while the first prompts are on the model.
            os.kill(os.getpid(), signal.SIGINT)
        async for event in real(request):
            yield event

    monkeypatch.setattr(engine, "stream", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    path = write(tmp_path, "prompts.txt", PROMPTS)
    out, err, error = run(path, batch_size=2)

    assert error is not None
    assert "stopped after 2 of 5 prompts" in str(error)
    assert len(records(out)) == 2
    assert Conversation.objects.count() == 2
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.fixture
def real_engine():
    """The real default model (converted once into var/models, shared with other tests)."""
    engine = load_engine(EngineConfig(device="cpu", cache_dir=MODEL_CACHE))
    with state.swapped(serving(engine)):
        yield engine
    engine.close()


@pytest.mark.django_db(transaction=True)
def test_it_answers_with_the_real_model(real_engine, tmp_path):
    path = write(
        tmp_path,
        "prompts.txt",
        [
            "What is the capital of France?",
            "Name a colour.",
            "Say hello.",
        ],
    )
    out, err, error = run(path, temperature=0, max_new_tokens=24, batch_size=3)

    assert error is None, err
    rows = records(out)
    assert len(rows) == 3
    assert all(row["reply"].strip() for row in rows)
    assert "Paris" in rows[0]["reply"]
    assert Conversation.objects.get(id=rows[0]["conversation_id"]).model_name == real_engine.info.model_name


@pytest.mark.django_db(transaction=True)
def test_it_stops_when_the_engine_is_closed(make_engine, tmp_path):
    closed = make_engine()
    closed.close()
    with state.swapped(serving(closed)):
        out, err, error = run(write(tmp_path, "prompts.txt", PROMPTS), batch_size=2)

    # The two prompts that went to the model are kept, as failed; no other one starts.
    assert error is not None
    assert "the model stopped" in str(error) and "stopped after 2 of 5 prompts" in str(error)
    rows = records(out)
    assert [r["finish_reason"] for r in rows] == ["error", "error"]
    assert all("not taking requests" in r["error"] for r in rows)
    assert Conversation.objects.count() == 2
    assert set(Message.objects.filter(role="assistant").values_list("status", flat=True)) == {"error"}


def test_it_fails_on_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="input file not found"):
        call_command("batch_prompts", str(tmp_path / "nope.txt"), stdout=io.StringIO(), stderr=io.StringIO())


def test_it_fails_on_an_unknown_option(tmp_path):
    with pytest.raises(CommandError, match="unrecognized arguments: --bogus"):
        call_command("batch_prompts", "x.txt", "--bogus", stdout=io.StringIO(), stderr=io.StringIO())


def test_it_fails_on_bad_parameters(tmp_path):
    path = write(tmp_path, "prompts.txt", ["Hi"])
    with pytest.raises(CommandError, match="bad parameters: .*temperature"):
        call_command("batch_prompts", path, temperature=3, stdout=io.StringIO(), stderr=io.StringIO())


def test_plan_sorts_by_length_across_params():
    greedy, sampled = GenerationParams.from_dict({"temperature": 0}), GenerationParams()
    prompts = [
        batch.Prompt(line, "p", "", params, tokens)
        for line, params, tokens in [(1, greedy, 9), (2, sampled, 1), (3, greedy, 5), (4, sampled, 7)]
    ]

    assert [p.line for p in batch.plan(prompts)] == [2, 3, 4, 1]


def test_detect_format():
    assert batch.detect_format("x.jsonl", ["hello"]) == "jsonl"
    assert batch.detect_format("x.TXT", ['{"prompt": "a"}']) == "txt"
    assert batch.detect_format("-", ["", '  {"prompt": "a"}']) == "jsonl"
    assert batch.detect_format("-", ["hello {"]) == "txt"
