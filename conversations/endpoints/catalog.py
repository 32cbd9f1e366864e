"""Which models a user may use, under which names, and the default: the registry joined with the admin's choices.

Every model a process has seen served gets a `ModelOption` row (offered to
everyone until staff say otherwise), so the list survives an endpoint that
is down, or a restart: such a model is listed as unavailable, and a turn on
it fails with `model_unavailable` rather than `invalid`.
"""

from __future__ import annotations

from django.conf import settings

from ..models import ModelOption
from .registry import Registry


class UnknownModel(Exception):
    """No model of that id exists, or this user may not use it."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"There is no model {model_id!r} you may use.")
        self.model_id = model_id


def remember(registry: Registry) -> None:
    """A row for each model served that has none yet (one query when there is nothing new)."""
    served = set(registry.served())
    known = set(ModelOption.objects.filter(model_id__in=served).values_list("model_id", flat=True))
    if served - known:
        ModelOption.objects.bulk_create([ModelOption(model_id=m) for m in served - known], ignore_conflicts=True)


def options(user, registry: Registry) -> list[ModelOption]:
    """The models `user` may use, in the admin's order."""
    remember(registry)
    return list(ModelOption.objects.usable_by(user))


def models_for(user, registry: Registry) -> dict:
    """`GET /api/models/`: {"models": [{id, name, endpoint, available}], "default": id or None}."""
    usable = options(user, registry)
    models = [
        {
            "id": option.model_id,
            "name": option.name,
            "endpoint": registry.endpoint_of(option.model_id),
            "available": registry.available(option.model_id),
            "context_length": registry.context_length(option.model_id, option.context_length),
        }
        for option in usable
    ]
    return {"models": models, "default": _default(usable, registry)}


def resolve(user, model_id: str | None, registry: Registry) -> str:
    """The model a turn or a chat of `user` uses: `model_id` if they may use it, the default when None.

    Raises UnknownModel.
    """
    # Every turn asks: the rows of models seen are made only for a model missing from them, or a default.
    usable = list(ModelOption.objects.usable_by(user)) if model_id is not None else []
    if not any(option.model_id == model_id for option in usable):
        usable = options(user, registry)
    if model_id is None:
        default = _default(usable, registry)
        if default is None:
            raise UnknownModel("(none is offered)")
        return default
    if not any(option.model_id == model_id for option in usable):
        raise UnknownModel(model_id)
    return model_id


def _default(usable: list[ModelOption], registry: Registry) -> str | None:
    """The admin's default, else CHAT_DEFAULT_MODEL, else the local model, else the first available, else the first."""
    ids = [option.model_id for option in usable]
    wanted = [option.model_id for option in usable if option.is_default]
    wanted += [settings.CHAT_DEFAULT_MODEL, registry.local_model]
    wanted += [model for model in ids if registry.available(model)]
    return next((model for model in wanted + ids if model and model in ids), None)
