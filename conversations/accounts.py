"""Sign-up approval (CHATSITE_SIGNUP=approval, docs/deploy.md): an account made then waits for staff.

While it waits it sees one page, `/accounts/waiting/`, and nothing else:
every other page sends it there, JSON answers 403, its chat sockets are
closed (conversations.live.consumers), its API keys are refused
(conversations.api.keys) and `batch_prompts --user` refuses it. Staff approve
it in the admin (*Accounts waiting for approval*). The first account runs the
site and never waits. With sign-up back to `open`, every waiting account is in.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.decorators import sync_and_async_middleware

from .models import PendingAccount

WAITING = "Your account is waiting for approval by this site's staff."


def admit(user) -> None:
    """The site's rule for an account just made (by the sign-up form or single sign-on): the first runs
    the site and can review transcripts in the admin; under CHATSITE_SIGNUP=approval the others wait."""
    if not get_user_model().objects.exclude(pk=user.pk).exists():
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    elif settings.CHATSITE_SIGNUP == "approval":
        PendingAccount.objects.create(user=user)


def is_pending(user) -> bool:
    """Whether `user` waits for approval (always False unless sign-up needs approval)."""
    if settings.CHATSITE_SIGNUP != "approval" or user is None or not user.is_authenticated:
        return False
    return PendingAccount.objects.filter(user_id=user.pk).exists()


def _open_to_waiting(path: str) -> bool:
    # The waiting page itself, logging out, health checks; /v1/ checks its keys (conversations.api.keys).
    return path in (reverse("waiting"), reverse("logout"), reverse("healthz")) or path.startswith("/v1/")


def _turned_away(request):
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"error": WAITING}, status=403)
    return redirect("waiting")


@sync_and_async_middleware
def waiting_room(get_response):
    """Every request of an account waiting for approval, but those `_open_to_waiting`, goes to its one page."""
    if iscoroutinefunction(get_response):

        async def async_middleware(request):
            if settings.CHATSITE_SIGNUP == "approval" and not _open_to_waiting(request.path):
                if await sync_to_async(is_pending)(await request.auser()):
                    return _turned_away(request)
            return await get_response(request)

        return async_middleware

    def sync_middleware(request):
        if settings.CHATSITE_SIGNUP == "approval" and not _open_to_waiting(request.path):
            if is_pending(request.user):
                return _turned_away(request)
        return get_response(request)

    return sync_middleware
