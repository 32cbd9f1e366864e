"""Assistants (docs/assistants.md): checking what a user sends for one, and starting a chat from one."""

from __future__ import annotations

from django.conf import settings

from inference import GenerationParams, InvalidParams

from ..endpoints import catalog
from ..live import state
from ..models import Assistant, Conversation, unstorable
from ..models.chat import PARAM_FIELDS

NAME_CHARS = 100
FIELDS = ("name", "system_prompt", "params", "model")


class BadAssistant(ValueError):
    """What is wrong with an assistant's fields, in words for the user."""


def usable(user, assistant_id: object) -> Assistant | None:
    """The assistant of that id the user may start a chat from (their own, or shared with them), else None."""
    if isinstance(assistant_id, str) and assistant_id.isascii() and assistant_id.isdigit() and len(assistant_id) < 10:
        assistant_id = int(assistant_id)
    if not isinstance(assistant_id, int) or isinstance(assistant_id, bool):
        return None
    return Assistant.objects.usable_by(user).filter(id=assistant_id).first()


def cleaned(user, data: object, partial: bool = False) -> dict:
    """The model fields of `data` ({"name", "system_prompt", "params", "model"}), checked. Raises BadAssistant.

    `partial` (a PATCH): only the fields given; otherwise `name` is required.
    """
    if not isinstance(data, dict):
        raise BadAssistant("The body must be a JSON object.")
    unknown = sorted(str(key) for key in data if key not in FIELDS)
    if unknown:
        raise BadAssistant(f"Unknown field: {', '.join(unknown)} (expected {', '.join(FIELDS)}).")
    if not partial and "name" not in data:
        raise BadAssistant("An assistant needs a name.")
    fields: dict = {}
    if "name" in data:
        fields["name"] = _text(data["name"], "name", NAME_CHARS, required=True)
    if "system_prompt" in data:
        fields["system_prompt"] = _text(data["system_prompt"], "system_prompt", settings.CHAT_MAX_SYSTEM_PROMPT_CHARS)
    if "params" in data:
        fields["params"] = _params(data["params"])
    if "model" in data:
        fields["model_name"] = _model(user, data["model"])
    return fields


def _text(value: object, name: str, limit: int, required: bool = False) -> str:
    if not isinstance(value, str):
        raise BadAssistant(f"{name} must be a string.")
    value = value.strip()
    if required and not value:
        raise BadAssistant(f"{name} must not be empty.")
    if len(value) > limit:
        raise BadAssistant(f"{name} can have at most {limit:,} characters.")
    problem = unstorable(value)
    if problem:
        raise BadAssistant(f"{name} {problem}.")
    return value


def _params(value: object) -> dict:
    """The parameters given, checked as a turn's are; only those are kept (the rest stay the defaults)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadAssistant("params must be an object.")
    other = sorted(str(name) for name in value if name not in PARAM_FIELDS)
    if other:
        raise BadAssistant(f"params may set {', '.join(PARAM_FIELDS)}; not {', '.join(other)}.")
    try:
        checked = GenerationParams.from_dict(value).to_dict()
    except InvalidParams as exc:
        raise BadAssistant(f"params: {exc}") from None
    return {name: checked[name] for name in value}


def _model(user, value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise BadAssistant("model must be a model's id (a string) or null.")
    try:
        return catalog.resolve(user, value, state.current().models)
    except catalog.UnknownModel as exc:
        raise BadAssistant(str(exc)) from None


def start_from(conversation: Conversation, assistant: Assistant, model: str) -> None:
    """A new chat (not saved yet) takes the assistant's system prompt, parameters and `model` (its model,
    resolved by the caller)."""
    conversation.assistant = assistant
    conversation.system_prompt = assistant.system_prompt
    conversation.set_params(GenerationParams.from_dict(assistant.params).to_dict())
    conversation.model_name = model
