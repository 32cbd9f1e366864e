"""`GET /api/models/`: the models this user may use, and the default (INTERFACE.md, "Models and endpoints")."""

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from ..live import state
from . import catalog


@login_required
@require_GET
def models(request):
    """{"models": [{"id", "name", "endpoint", "available", "context_length"}], "default": id or null}.

    Read from what this process last saw of its endpoints: it never waits for one.
    """
    return JsonResponse(catalog.models_for(request.user, state.current().models))
