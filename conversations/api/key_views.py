"""/settings/keys/: a user's API keys: create (shown once), list, revoke. Only their own."""

from django import forms
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ..models import ApiKey
from . import keys as apikeys

# Where a new key waits, in the session, for the page the POST redirects to: shown once, and a reload
# of that page neither shows it again nor makes a second key.
NEW_KEY = "api_keys.new_key"


class KeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. “laptop” or “notebook”.")


@login_required
@require_http_methods(["GET", "POST"])
def keys(request):
    form = KeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        _, request.session[NEW_KEY] = apikeys.create(request.user, form.cleaned_data["name"])
        return redirect("api_keys")
    new_key = request.session.pop(NEW_KEY, None) if request.method == "GET" else None
    context = {"form": form, "new_key": new_key, "keys": ApiKey.objects.for_user(request.user)}
    response = render(request, "conversations/keys.html", context)
    if new_key:
        response["Cache-Control"] = "no-store"  # the key is shown this once
    return response


@login_required
@require_POST
def revoke(request, key_id: int):
    if not apikeys.revoke(request.user, key_id):
        raise Http404("No such key.")
    flash.success(request, "The key is revoked: requests made with it are refused from now on.")
    return redirect("api_keys")
