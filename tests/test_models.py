import pytest
from asgiref.sync import async_to_sync

from conversations.live import replies
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def test_replies_left_streaming_are_interrupted_at_start(alice, conversation):
    convo = conversation(alice)
    Message.objects.create(conversation=convo, role="assistant", status="streaming", content="half a rep")
    assert Message.interrupt_streaming() == 1
    reply = convo.messages.get()
    assert (reply.status, reply.finish_reason, reply.content) == ("interrupted", "interrupted", "half a rep")


def test_prompt_history_keeps_order_and_skips_failed_replies(alice, conversation):
    convo = conversation(alice, system_prompt="Be kind.", messages=[("user", "one"), ("assistant", "two")])
    convo.append("user", "three")
    convo.append("assistant", "", status="error")
    assert convo.prompt_history() == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]


def test_prompt_history_until_a_message(alice, conversation):
    convo = conversation(alice, messages=[("user", "one"), ("assistant", "two")])
    assert convo.prompt_history(until=convo.messages.last()) == [{"role": "user", "content": "one"}]


@pytest.mark.parametrize(
    "text, title",
    [
        ("Hello", "Hello"),
        ("  Plan   a\ntrip  ", "Plan a trip"),
        ("word " * 30, "word word word word word word word word word word word word…"),
    ],
)
def test_titles_come_from_the_first_message(text, title):
    assert Conversation().title_from(text) == title


@pytest.mark.django_db(transaction=True)  # replies.finish's database work goes through Channels (autocommit)
def test_finish_stores_status_reason_and_usage(alice, conversation):
    # The one writer of a reply's end (conversations.live.replies), on a synchronous caller's connection.
    convo = conversation(alice)
    reply = Message.objects.create(conversation=convo, role="assistant", status="streaming")
    usage = {"prompt_tokens": 10, "completion_tokens": 4, "ttft_ms": 50, "duration_ms": 500}
    assert async_to_sync(replies.finish)(convo.id, reply.id, replies.Ending("cancelled", "partial", usage))
    reply.refresh_from_db()
    assert (reply.status, reply.finish_reason, reply.content) == ("cancelled", "cancelled", "partial")
    assert (reply.prompt_tokens, reply.completion_tokens, reply.ttft_ms, reply.duration_ms) == (10, 4, 50, 500)
    assert reply.tokens_per_s == round(4 * 1000 / 450, 1)


def test_conversations_list_newest_first(alice, conversation):
    first = conversation(alice, title="first")
    second = conversation(alice, title="second")
    first.start_turn(first.params())
    assert list(Conversation.objects.for_user(alice)) == [first, second]
