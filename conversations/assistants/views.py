"""Assistants over JSON (`/api/assistants/`) and as pages (`/assistants/`): list, create, change, delete.

A user changes and deletes only their own; staff share theirs with groups or
everyone in the admin. Another user's private assistant is not found (404).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ..endpoints import catalog
from ..live import state
from ..models import Assistant
from . import BadAssistant, cleaned, usable


@login_required
@require_http_methods(["GET", "POST"])
def api_list(request):
    """GET: the assistants this user may use. POST: create a private one from the JSON body."""
    if request.method == "GET":
        return JsonResponse({"assistants": [a.as_dict() for a in Assistant.objects.usable_by(request.user)]})
    try:
        fields = cleaned(request.user, _json(request))
    except BadAssistant as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    assistant = Assistant.objects.create(owner=request.user, **fields)
    return JsonResponse(assistant.as_dict(), status=201)


@login_required
@require_http_methods(["GET", "PATCH", "DELETE"])
def api_detail(request, assistant_id: int):
    assistant = usable(request.user, assistant_id)
    if assistant is None:
        raise Http404("No such assistant.")
    if request.method == "GET":
        return JsonResponse(assistant.as_dict())
    if assistant.owner_id != request.user.id:
        return JsonResponse({"error": "Only its owner can change or delete a shared assistant."}, status=403)
    if request.method == "DELETE":
        assistant.delete()
        return JsonResponse({"deleted": True})
    try:
        fields = cleaned(request.user, _json(request), partial=True)
    except BadAssistant as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    for name, value in fields.items():
        setattr(assistant, name, value)
    assistant.save()
    return JsonResponse(assistant.as_dict())


def _json(request) -> object:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadAssistant("The body is not valid JSON.") from None


@login_required
@require_http_methods(["GET", "POST"])
def page(request, assistant_id: int | None = None):
    """The assistants page: the user's own and the shared ones, a form to create one or change `assistant_id`."""
    editing = _own(request, assistant_id) if assistant_id is not None else None
    blank: dict[str, Any] = {"name": "", "system_prompt": "", "params": {}, "model": ""}
    values = _form_values(editing) if editing else blank
    if request.method == "POST":
        values = _posted(request)
        try:
            fields = cleaned(request.user, values)
        except BadAssistant as exc:
            flash.error(request, str(exc))
        else:
            if editing:
                Assistant.objects.filter(id=editing.id).update(**fields)
                flash.success(request, f"Saved “{fields['name']}”.")
            else:
                created = Assistant.objects.create(owner=request.user, **fields)
                flash.success(request, f"Created “{created.name}”. Pick it when you start a new chat.")
            return redirect("assistants")
    context = {
        "assistants": Assistant.objects.usable_by(request.user).select_related("owner"),
        "editing": editing,
        "values": values,
        "models": catalog.models_for(request.user, state.current().models)["models"],
        "param_fields": [
            {"name": name, "label": label, "help": help_text, "value": values["params"].get(name)}
            for name, label, help_text in PARAM_INPUTS
        ],
    }
    return render(request, "conversations/assistants.html", context)


@login_required
@require_POST
def delete(request, assistant_id: int):
    assistant = _own(request, assistant_id)
    assistant.delete()
    flash.success(request, f"Deleted the assistant “{assistant.name}”. Chats started from it keep their settings.")
    return redirect("assistants")


def _own(request, assistant_id: int) -> Assistant:
    assistant = Assistant.objects.filter(owner=request.user, id=assistant_id).first()
    if assistant is None:
        raise Http404("No such assistant of yours.")
    return assistant


# The parameters the page offers; left empty, the chat keeps the default.
PARAM_INPUTS = (
    ("temperature", "Temperature", "0–2; empty: 0.7."),
    ("top_p", "Top p", "Above 0, up to 1; empty: 0.9."),
    ("max_new_tokens", "Max new tokens", "1–4096; empty: 1024."),
    ("repetition_penalty", "Repetition penalty", "1–2; empty: 1.05."),
)


def _posted(request) -> dict[str, Any]:
    """The page's form as the JSON API takes it: empty parameter fields are left to the defaults."""
    params: dict = {}
    for name, _label, _help in PARAM_INPUTS:
        raw = request.POST.get(name, "").strip()
        if raw:
            try:
                params[name] = int(raw) if name == "max_new_tokens" else float(raw)
            except ValueError:
                params[name] = raw  # refused by cleaned(), naming the field
    return {
        "name": request.POST.get("name", ""),
        "system_prompt": request.POST.get("system_prompt", ""),
        "params": params,
        "model": request.POST.get("model", ""),
    }


def _form_values(assistant: Assistant) -> dict[str, Any]:
    return {
        "name": assistant.name,
        "system_prompt": assistant.system_prompt,
        "params": assistant.params,
        "model": assistant.model_name,
    }
