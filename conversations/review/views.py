"""The JSON endpoints of review: a user's feedback on a reply, and their token use today."""

import json

from asgiref.sync import async_to_sync
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from ..live.frames import publish
from . import feedback as review
from . import quotas


@login_required
@require_POST
def feedback(request, message_id: int):
    """Rate one's own reply: {"rating": 1 | -1 | 0, "comment": "..."}; other tabs of the chat see it."""
    reply = review.rated_reply(request.user, message_id)
    if reply is None:
        raise Http404("No such reply.")
    try:
        rating, comment = review.parse(json.loads(request.body or b"null"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, review.BadFeedback) else "The body is not valid JSON."
        return JsonResponse({"error": message}, status=400)
    stored = review.rate(reply, rating, comment)
    event = {"type": "chat.feedback", "message_id": reply.id, "feedback": stored}
    async_to_sync(publish)(reply.conversation_id, event)
    return JsonResponse(stored or {"rating": 0, "comment": ""})


@login_required
@require_GET
def usage(request):
    """{"used", "limit" (0 = none), "left" (null without a limit), "resets_at"} for today (UTC)."""
    return JsonResponse(quotas.status(request.user.id))
