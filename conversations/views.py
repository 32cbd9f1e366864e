"""Pages and JSON endpoints. Every view is limited to the owner's conversations."""

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.db import connections
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from . import accounts, assistants, sso
from .endpoints import catalog
from .forms import ConversationForm, RenameForm, SignupForm
from .history import export, importing
from .history import listing as history
from .history.tree import PAGE_SIZE, page_dicts, path_page
from .live import process, state, summaries, turns
from .models import Assistant, Conversation

MAX_PAGE = 500  # messages of a transcript one request may ask for


def conversation_for_user(request, conversation_id) -> Conversation:
    """The user's conversation, or 404 — never 403, so ids of others stay secret."""
    return get_object_or_404(Conversation.objects.for_user(request.user), id=conversation_id)


def _chat_page(request, conversation: Conversation | None):
    # The newest page of the active path; earlier messages load as the reader scrolls up.
    messages, earlier = path_page(conversation) if conversation else ([], False)
    # The models as this process last saw them: a page never waits for an endpoint.
    models = catalog.models_for(request.user, state.current().models)
    view = history.view_of(conversation)
    context = {
        "sidebar": history.sidebar(request.user, view),
        "sidebar_view": view,
        "sidebar_views": history.VIEWS,
        "conversation": conversation,
        "messages_list": messages,
        "summary": summaries.on_active_path(conversation) if conversation else None,
        "earlier": earlier,
        "new_form": ConversationForm(),
        "models": models["models"],
        "current_model": conversation.model_name if conversation else models["default"],
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        "max_system_prompt_chars": settings.CHAT_MAX_SYSTEM_PROMPT_CHARS,
        "temporary_chats": settings.CHAT_TEMPORARY_CHATS,
        "assistants": list(Assistant.objects.usable_by(request.user)) if conversation is None else [],
        "temporary_grace": int(settings.CHAT_TEMPORARY_GRACE),
    }
    return render(request, "conversations/chat.html", context)


@login_required
@require_GET
def index(request):
    return _chat_page(request, None)


@login_required
@require_GET
def conversation(request, conversation_id):
    return _chat_page(request, conversation_for_user(request, conversation_id))


@login_required
@require_POST
def new(request):
    form = ConversationForm(request.POST)
    if not form.is_valid():
        flash.error(request, " ".join(e for errors in form.errors.values() for e in errors))
        return redirect("index")
    assistant = None
    if request.POST.get("assistant"):
        assistant = assistants.usable(request.user, request.POST["assistant"])
        if assistant is None:
            raise Http404("No such assistant.")
    # The assistant's model, else the one picked in the settings, else the default.
    wanted = (assistant.model_name if assistant else "") or request.POST.get("model") or None
    try:
        model = catalog.resolve(request.user, wanted, state.current().models)
    except catalog.UnknownModel as exc:
        flash.error(request, str(exc))
        return redirect("index")
    temporary = request.POST.get("temporary") == "1"
    if temporary and not settings.CHAT_TEMPORARY_CHATS:
        flash.error(request, "Temporary chats are turned off on this site.")
        return redirect("index")
    conversation = form.save(commit=False)
    conversation.user = request.user
    conversation.model_name = model
    if temporary:
        conversation.temporary, conversation.seen_at = True, timezone.now()
    if assistant is not None:
        assistants.start_from(conversation, assistant, model)
    conversation.save()
    return redirect(conversation)


@login_required
@require_POST
def rename(request, conversation_id):
    conversation = conversation_for_user(request, conversation_id)
    form = RenameForm(request.POST)
    if form.is_valid():
        conversation.title, conversation.title_source = form.cleaned_data["title"], Conversation.TitleSource.USER
        conversation.save(update_fields=["title", "title_source"])
    else:
        flash.error(request, "A title needs 1 to 200 characters.")
    return redirect(conversation)


@login_required
@require_POST
async def delete(request, conversation_id):
    """Through the turn owner: a reply streaming in the chat is stopped, ended and charged first.

    The chat leaves every view at once; the page says so, with Undo for
    CHAT_DELETE_UNDO_S (conversations.live.sweep). Back to `next` when it is
    a page of this site, else to a new chat.
    Async, so no thread is held while the reply ends: its final save needs
    the one thread that synchronous views and database calls share.
    """
    conversation = await database_sync_to_async(conversation_for_user)(request, conversation_id)
    try:
        await turns.delete(conversation.id, undo=True)
    except turns.Refused as exc:
        await database_sync_to_async(flash.error)(request, exc.message)
        return redirect(conversation)
    text = f"Deleted “{conversation.display_title}”."
    undo = f"undo {reverse('restore', args=[conversation.id])}"
    await database_sync_to_async(flash.success)(request, text, extra_tags=undo)
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, {request.get_host()}, request.is_secure()):
        return redirect(back)
    return redirect("index")


@login_required
@require_POST
def restore(request, conversation_id):
    """Undo a delete, while the chat is still kept (CHAT_DELETE_UNDO_S); 404 once it is gone for good."""
    deleted = Conversation.objects.filter(user=request.user, id=conversation_id, deleted_at__isnull=False)
    conversation = get_object_or_404(deleted)
    deleted.update(deleted_at=None)
    flash.success(request, f"“{conversation.display_title}” is back in your chats.")
    return redirect(conversation)


def _exportable(request, conversation_id) -> Conversation:
    """The user's conversation, unless it is a temporary chat: those are never exported."""
    conversation = conversation_for_user(request, conversation_id)
    if conversation.temporary:
        raise Http404("A temporary chat is not exported.")
    return conversation


@login_required
@require_GET
def export_json(request, conversation_id):
    conversation = _exportable(request, conversation_id)
    response = JsonResponse(export.as_json(conversation), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{export.filename(conversation, "json")}"'
    return response


@login_required
@require_GET
def export_markdown(request, conversation_id):
    conversation = _exportable(request, conversation_id)
    response = HttpResponse(export.to_markdown(conversation), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export.filename(conversation, "md")}"'
    return response


@login_required
@require_GET
def api_conversations(request):
    try:
        query = history.ListQuery.from_params(request.GET)
    except history.InvalidListQuery as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(history.as_dict(history.page(request.user, query)))


# What a page says after a change of a chat's flags, and the view that undoes it (none: nothing to undo).
FLAG_CHANGED = {
    ("archived", True): ("Archived “{}”: it is in the Archived view of the chat list.", "unarchive"),
    ("archived", False): ("“{}” is back in your chats.", None),
    ("pinned", True): ("Pinned “{}” to the top of the list.", None),
    ("pinned", False): ("Unpinned “{}”.", "pin"),
}


def _set_flag(request, conversation_id, name: str, value: bool):
    """Archive, unarchive, pin or unpin. The list's order changes, the
    conversation's `updated_at` does not. A page is told so, with Undo where
    the change takes the chat out of sight (archive) or out of its place (unpin)."""
    conversation = conversation_for_user(request, conversation_id)
    setattr(conversation, name, value)
    conversation.save(update_fields=[name])
    if wants_json(request):
        return JsonResponse(conversation.as_dict())
    text, undo = FLAG_CHANGED[(name, value)]
    undo_tag = f"undo {reverse(undo, args=[conversation.id])}" if undo else ""
    flash.success(request, text.format(conversation.display_title), extra_tags=undo_tag)
    return redirect(conversation)


@login_required
@require_POST
def archive(request, conversation_id):
    return _set_flag(request, conversation_id, "archived", True)


@login_required
@require_POST
def unarchive(request, conversation_id):
    return _set_flag(request, conversation_id, "archived", False)


@login_required
@require_POST
def pin(request, conversation_id):
    return _set_flag(request, conversation_id, "pinned", True)


@login_required
@require_POST
def unpin(request, conversation_id):
    return _set_flag(request, conversation_id, "pinned", False)


def wants_json(request) -> bool:
    """Whether the client asked for JSON (a page's fetch) rather than a page (a form's post)."""
    return "application/json" in request.headers.get("Accept", "")


@login_required
async def import_conversations(request):
    """GET: the import form. POST: import the uploaded `file`.

    Async so that a big file is parsed and stored in a thread of its own
    (thread_sensitive=False), not in the one thread every synchronous view
    shares under ASGI: other users' pages keep loading meanwhile.
    """
    if request.method == "GET":
        handler = _import_page
    elif request.method == "POST":
        handler = _import_upload
    else:
        return HttpResponseNotAllowed(["GET", "POST"])
    return await database_sync_to_async(_closing_connections, thread_sensitive=False)(handler, request)


def _closing_connections(handler, request):
    try:
        return handler(request)
    finally:
        # The executor's threads outlive the request: leave no connection open in them.
        connections.close_all()


def _import_page(request):
    return render(request, "conversations/import.html", {"max_mb": settings.CHAT_IMPORT_MAX_MB})


def _import_upload(request):
    upload = request.FILES.get("file")
    if upload is None:
        return _import_refused(request, "Choose a file to import (the form field is named 'file').", 400)
    if upload.size > settings.CHAT_IMPORT_MAX_MB * 1024 * 1024:
        message = f"The file is larger than {settings.CHAT_IMPORT_MAX_MB} MB (CHAT_IMPORT_MAX_MB)."
        return _import_refused(request, message, 413)
    with upload.open("rb") as file:
        result = importing.import_file(request.user, file)
    if wants_json(request):
        return JsonResponse(result.as_dict(), status=400 if result.error and not result.imported else 200)
    level = flash.success if result.imported and not (result.error or result.skipped) else flash.warning
    level(request, result.summary())
    return redirect("index" if result.imported else "import")


def _import_refused(request, message: str, status: int):
    if wants_json(request):
        return JsonResponse({"error": message}, status=status)
    flash.error(request, message)
    return redirect("import")


@login_required
@require_GET
def api_conversation(request, conversation_id):
    """The conversation and its active path; with `limit` (and `before`, a message id), one page of the
    path, newest messages last, and `earlier`: whether the path goes on above it."""
    conversation = conversation_for_user(request, conversation_id)
    if "limit" not in request.GET and "before" not in request.GET:
        return JsonResponse(export.as_json(conversation) | {"summary": summaries.on_active_path(conversation)})
    limit, before = request.GET.get("limit", str(PAGE_SIZE)), request.GET.get("before")
    if not _whole_number(limit) or not 1 <= int(limit) <= MAX_PAGE or (before and not _whole_number(before)):
        return JsonResponse({"error": f"limit must be 1 to {MAX_PAGE}, before a message id"}, status=400)
    messages, earlier = path_page(conversation, int(before) if before else None, int(limit))
    page = {"messages": page_dicts(messages), "earlier": earlier, "summary": summaries.on_active_path(conversation)}
    return JsonResponse(conversation.as_dict() | page)


def _whole_number(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) < 19


def locked_out(request, response, credentials):
    """django-axes' answer to a locked-out login: the login page again, saying why (HTTP 429)."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    # Unbound: validating it would try the password once more.
    form = AuthenticationForm(request, initial={"username": (credentials or {}).get("username", "")})
    lockout = (
        f"Too many failed logins for this account from your address. Try again in {minutes} minutes, "
        "or ask the site's admin to unlock it."
    )
    context = {"form": form, "next": request.POST.get("next", ""), "lockout": lockout} | sso.login_context(request)
    return sso.allowing_providers(render(request, "registration/login.html", context, status=429), context)


def signup(request):
    if not settings.CHATSITE_ALLOW_SIGNUP or not settings.CHATSITE_PASSWORD_LOGIN:
        raise Http404("Sign-up with a password is closed on this site.")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("waiting" if accounts.is_pending(user) else "index")
    return render(
        request, "registration/signup.html", {"form": form, "approval": settings.CHATSITE_SIGNUP == "approval"}
    )


@login_required
@require_GET
def waiting(request):
    """The one page of an account waiting for approval (conversations.accounts)."""
    if not accounts.is_pending(request.user):
        return redirect("index")
    return render(request, "registration/waiting.html")


@require_GET
def healthz(request):
    status = process.health()
    return JsonResponse(status, status=200 if status["status"] == "ok" else 503)
