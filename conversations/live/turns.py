"""Starting a turn: `start()` (send, edit, regenerate), `switch()` and `stop()`, for every client.

Anything that starts a reply (the chat socket, the API, `batch_prompts`) calls
`start()`; it creates the turn's rows in one locked transaction, publishes its
first frames and hands the reply to this process's runner. The reply then
ends through conversations.live.replies.finish(), which nothing here needs
back: the path only goes down (turns -> runner -> generation -> replies).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from channels.db import database_sync_to_async
from django.db import DatabaseError, transaction
from django.utils import timezone

from inference import GenerationParams, InferenceError

from ..endpoints import catalog
from ..history.tree import Tree
from ..models import Conversation, Message
from ..review import quotas
from . import state, summaries
from .frames import follow, publish
from .replies import BUSY, DB_BUSY, RESTARTING, Ending, Gone, Refused, Turn, finish

logger = logging.getLogger(__name__)

__all__ = ["Gone", "Refused", "Turn", "delete", "start", "stop", "switch"]

# How long a delete waits for the reply it stopped to end (one decoding step
# locally, a round trip to a worker) before ending it itself.
STOP_WAIT_SECONDS = 10.0
DELETE_ATTEMPTS = 3


async def start(
    conversation_id,
    kind: str,
    params: GenerationParams,
    text: str = "",
    message_id: int | None = None,
    model: str | None = None,
) -> Turn:
    """Start a turn: `send` (a user message `text` and a reply), `edit` (a user message `text` beside
    message `message_id`, and a reply), `regenerate` (a variant of the last reply, which stays) or
    `continue` (the last reply goes on from where it ended, in place, on the model that wrote it).

    `model` becomes the conversation's model from this turn on (None: it keeps
    its own). The new reply ends the active path. Returns once the reply is
    handed to the runner. Raises Refused (busy, the conversation is gone,
    nothing to regenerate or edit, a model the user may not use, the database
    is locked).
    """
    live = state.current()
    if not live.accepting:
        raise Refused("busy", RESTARTING)
    try:
        if kind == "continue":
            turn = await _continued(str(conversation_id), params)
        else:
            turn = await _create(str(conversation_id), kind, params, text, message_id, model)
    except DatabaseError as exc:
        logger.warning("cannot store a turn of %s: %s", conversation_id, exc)
        raise Refused("busy", DB_BUSY) from None
    if turn.user_message is not None:
        event = {"type": "chat.message", "message": turn.user_message}
        await publish(turn.conversation_id, event | ({"title": turn.title} if turn.title else {}))
    start_event = {"type": "chat.start", "message_id": turn.message_id, "model": turn.model, "replaces": turn.replaces}
    if turn.prefill:
        start_event["content"] = turn.prefill  # a Continue: the text its tokens extend
    await publish(turn.conversation_id, start_event | turn.place)
    try:
        await live.runner.start(turn)
    except Refused as exc:
        # Nobody will generate it: end it now so the conversation is not stuck busy.
        await finish(turn.conversation_id, turn.message_id, Ending("error", "", error=(exc.code, exc.message)))
    except Exception:
        logger.exception("reply %s could not start", turn.message_id)
        error = ("generation_failed", "The reply could not be started; try again in a moment.")
        await finish(turn.conversation_id, turn.message_id, Ending("error", "", error=error))
    return turn


@database_sync_to_async
def _create(
    conversation_id: str, kind: str, params: GenerationParams, text: str, message_id: int | None, model: str | None
) -> Turn:
    with transaction.atomic():
        conversation, tree = _locked_idle(conversation_id)
        model = _model(conversation, model)
        user_message, replaces = None, None
        if kind == "regenerate":
            last = tree.leaf()
            if last is None or last.role != Message.Role.ASSISTANT:
                raise Refused("invalid", "There is no reply to regenerate.")
            replaces, parent = last.id, tree.by_id.get(last.parent_id)
        else:
            parent = tree.leaf() if kind == "send" else _edited(tree, message_id)
            user_message = tree.add(
                Message.objects.create(conversation=conversation, role=Message.Role.USER, content=text, parent=parent)
            )
            parent = user_message
        reply = tree.add(
            Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model_name=model,
                parent=parent,
            )
        )
        path = conversation.prompt_path(until=reply, tree=tree)
        history = conversation.prompt_history(path=path)
        capped = _reserve_tokens(conversation, reply, history, params, model)
        untitled = not conversation.title
        conversation.start_turn(params.to_dict(), first_text=text or None, model=model, leaf=reply)
        summary = summaries.stored(path)
    return Turn(
        conversation_id=conversation_id,
        message_id=reply.id,
        history=history,
        params=capped,
        model=model,
        replaces=replaces,
        user_message=tree.as_dict(user_message) if user_message else None,
        place={"parent": reply.parent_id, "siblings": tree.siblings(reply)},
        title=conversation.title if untitled and conversation.title else None,
        path=[message.id for message in path],
        summary=summary,
    )


@database_sync_to_async
def _continued(conversation_id: str, params: GenerationParams) -> Turn:
    """The last reply of the active path, streaming again with its text as the start of what comes next."""
    with transaction.atomic():
        conversation, tree = _locked_idle(conversation_id)
        reply = tree.leaf()
        if reply is None or reply.role != Message.Role.ASSISTANT or reply.finish_reason == "stop":
            raise Refused("invalid", "There is no reply to continue: only one cut short (by its length or a stop) can.")
        model = _model(conversation, reply.model_name or None)
        path = conversation.prompt_path(until=reply, tree=tree)  # the path above it
        history = conversation.prompt_history(path=path)
        before = {name: getattr(reply, name) for name in Message.USAGE_FIELDS}
        quotas.settle(reply.id, quotas.spent(reply))  # a hold its last end never settled (a killed server)
        Message.objects.filter(id=reply.id).update(status=Message.Status.STREAMING, finish_reason="", model_name=model)
        prompt = [*history, {"role": "assistant", "content": reply.content}]
        capped = _reserve_tokens(conversation, reply, prompt, params, model, charged=quotas.spent(reply))
        conversation.start_turn(params.to_dict(), model=model)
        summary = summaries.stored(path)
    return Turn(
        conversation_id=conversation_id,
        message_id=reply.id,
        history=history,
        params=capped,
        model=model,
        place={"parent": reply.parent_id, "siblings": tree.siblings(reply)},
        prefill=reply.content,
        before=before,
        path=[message.id for message in path],
        summary=summary,
    )


def _locked_idle(conversation_id: str) -> tuple[Conversation, Tree]:
    """The conversation, locked for this transaction, and its messages; Refused while one of its replies streams.

    Its user comes in the same query (every turn checks which models they may use).
    """
    locked = Conversation.objects.select_for_update(of=("self",)).select_related("user")
    conversation = locked.filter(id=conversation_id).first()
    if conversation is None or conversation.deleted_at is not None:
        raise Gone
    tree = Tree.of(conversation)
    if state.current().runner.in_progress(conversation_id) or tree.streaming():
        raise Refused("busy", BUSY)
    return conversation, tree


def _model(conversation: Conversation, wanted: str | None) -> str:
    """The turn's model: `wanted`, else the conversation's; Refused when its user may not use it."""
    try:
        return catalog.resolve(conversation.user, wanted or conversation.model_name or None, state.current().models)
    except catalog.UnknownModel as exc:
        raise Refused("invalid", str(exc)) from None


def _edited(tree: Tree, message_id: int | None) -> Message | None:
    """The parent of the edited message (a user message of this conversation); Refused otherwise."""
    edited = tree.by_id.get(message_id) if message_id is not None else None
    if edited is None or edited.role != Message.Role.USER:
        raise Refused("invalid", "Only your own messages in this conversation can be edited.")
    return tree.by_id.get(edited.parent_id)


async def switch(conversation_id, message_id: int) -> list[dict]:
    """Make the branch through `message_id` active (down to its newest leaf) and send every tab the path."""
    try:
        path, summary = await _switch(str(conversation_id), message_id)
    except DatabaseError as exc:
        logger.warning("cannot switch a branch of %s: %s", conversation_id, exc)
        raise Refused("busy", DB_BUSY) from None
    await publish(conversation_id, {"type": "chat.path", "messages": path, "summary": summary})
    return path


@database_sync_to_async
def _switch(conversation_id: str, message_id: int) -> tuple[list[dict], dict | None]:
    """The new active path, and its summary."""
    with transaction.atomic():
        conversation, tree = _locked_idle(conversation_id)
        target = tree.by_id.get(message_id)
        if target is None:
            raise Refused("invalid", "There is no such message in this conversation.")
        leaf = tree.newest_leaf_under(target)
        conversation.activate(leaf)
        tree.active_leaf_id = leaf.id
        return tree.path_dicts(), summaries.public(summaries.stored(tree.path()))


def _reserve_tokens(
    conversation: Conversation,
    reply: Message,
    history: list[dict],
    params: GenerationParams,
    model: str,
    charged: int = 0,
) -> GenerationParams:
    """Hold the reply's most tokens on the user's quota, or refuse the turn (its rows roll back).

    `charged`: what a continued reply was charged already. Returns the turn's
    parameters with max_new_tokens capped at what is left of the user's day.
    """
    try:
        prompt = _prompt_tokens(history, model)
        hold = quotas.reserve(conversation.user_id, prompt, params.max_new_tokens, reply.id, charged=charged)
    except quotas.QuotaExceeded as exc:
        raise Refused("rate_limited", exc.message) from None
    return replace(params, max_new_tokens=hold.max_new_tokens)


def _prompt_tokens(history: list[dict], model: str) -> int:
    """The prompt's tokens at most: counted where this process has the model, else bounded without it
    (a worker-mode web process, an endpoint's model)."""
    live = state.current()
    engine = live.engine if model == live.models.local_model else None
    if engine is not None:
        try:
            return engine.count_tokens(history)  # untrimmed: never less than what the reply reads
        except InferenceError:
            pass  # the engine refuses it when the turn runs, saying why
    return quotas.prompt_bound(history)


async def stop(conversation_id) -> bool:
    """Ask the conversation's live reply to stop; False when there is none."""
    return await state.current().runner.stop(str(conversation_id))


async def delete(conversation_id, undo: bool = False) -> None:
    """Delete a conversation. A reply streaming in it is stopped first, through its runner, and ends as
    any other (`end` to every tab, its quota settled with what it spent); only then do the rows go.

    With `undo`, the rows stay for CHAT_DELETE_UNDO_S, out of every user's
    sight, until the sweep (conversations.live.sweep) removes them, unless
    `restore()` brings the conversation back first.
    Deleted under the conversation's lock, once no reply streams, so a turn
    started meanwhile is stopped in its turn rather than deleted under its runner.
    Raises Refused (busy) when replies keep streaming (the database refuses their ends).
    """
    key = str(conversation_id)
    for _ in range(DELETE_ATTEMPTS):
        async with follow(key) as followed:
            message_id = await _delete_if_idle(key, undo)
            if message_id is None:
                return
            await state.current().runner.stop(key)
            try:
                async with asyncio.timeout(STOP_WAIT_SECONDS):
                    async for _ in followed.until_end(message_id):
                        pass
            except TimeoutError:  # its runner did not answer (a dead worker): end it here, as a reaper would
                logger.warning("reply %s did not stop for a delete; ending it", message_id)
                snapshot = await state.current().runner.snapshot(key)
                text = snapshot[1] if snapshot and snapshot[0] == message_id else await _stored_text(message_id)
                await finish(key, message_id, Ending("cancelled", text))
    raise Refused("busy", DB_BUSY)


@database_sync_to_async
def _delete_if_idle(conversation_id: str, undo: bool) -> int | None:
    """Delete the conversation unless a reply streams in it; returns that reply's id, or None once deleted."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().filter(id=conversation_id).first()
        if conversation is None:
            return None
        live = conversation.live_reply()
        if live is not None:
            return live.id
        if undo:
            Conversation.objects.filter(id=conversation_id).update(deleted_at=timezone.now())
        else:
            conversation.delete()
    return None


@database_sync_to_async
def _stored_text(message_id: int) -> str:
    return Message.objects.filter(id=message_id).values_list("content", flat=True).first() or ""
