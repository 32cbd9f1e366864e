"""Share links over HTTP: share and unshare a chat, read a share, continue it, list and revoke one's shares."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from ..models import Conversation, Share
from ..views import conversation_for_user, wants_json
from . import NotShareable, as_dict, continue_as, share


@login_required
@require_POST
def create(request, conversation_id):
    """POST /c/<uuid>/share/: {"url": "/s/<token>/"}; a page is told the link instead."""
    conversation = conversation_for_user(request, conversation_id)
    try:
        link = share(conversation)
    except NotShareable as exc:
        if wants_json(request):
            return JsonResponse({"error": str(exc)}, status=400)
        flash.error(request, str(exc))
        return redirect(conversation)
    url = request.build_absolute_uri(link.get_absolute_url())
    if wants_json(request):
        return JsonResponse({"url": link.get_absolute_url()})
    flash.success(request, f"Shared: {url} shows this chat as it is now. Revoke it here or under Shared links.")
    return redirect(conversation)


@login_required
@require_POST
def unshare(request, conversation_id):
    """POST /c/<uuid>/unshare/: every link to the chat answers 404 from now on."""
    conversation = conversation_for_user(request, conversation_id)
    revoked, _ = conversation.shares.all().delete()
    if wants_json(request):
        return JsonResponse({"shared": False, "revoked": revoked})
    flash.success(request, "The chat's share links are revoked." if revoked else "The chat had no share links.")
    return redirect(conversation)


@require_GET
def read(request, token: str):
    """GET /s/<token>/: the snapshot, for logged-in users (anyone with CHATSITE_SHARE_PUBLIC=1)."""
    if not settings.CHATSITE_SHARE_PUBLIC and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    link = get_object_or_404(Share, token=token)
    if wants_json(request):
        return JsonResponse(as_dict(link))
    return render(request, "conversations/shared.html", {"share": link})


@login_required
@require_POST
def continue_chat(request, token: str):
    """POST /s/<token>/continue/: the snapshot copied into a new chat of the reader's."""
    link = get_object_or_404(Share, token=token)
    return redirect(continue_as(request.user, link))


@login_required
@require_GET
def listing(request):
    """/settings/shares/: the user's live links, each with Revoke."""
    links = Share.objects.filter(conversation__in=Conversation.objects.for_user(request.user))
    context = {"links": links.select_related("conversation"), "share_public": settings.CHATSITE_SHARE_PUBLIC}
    return render(request, "conversations/shares.html", context)


@login_required
@require_POST
def revoke(request, share_id: int):
    link = Share.objects.filter(id=share_id, conversation__in=Conversation.objects.for_user(request.user)).first()
    if link is None:
        raise Http404("No such share link of yours.")
    link.delete()
    flash.success(request, f"Revoked the link to “{link.title}”.")
    return redirect("shares")
