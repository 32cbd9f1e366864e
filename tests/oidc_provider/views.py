"""The test-only admin API of the provider: users and clients made over HTTP by the tests' process.

CSRF-exempt and unauthenticated, which is only acceptable because this project exists for tests
and listens on loopback only.
"""

from django.contrib.auth.models import Group, User
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from oauth2_provider.models import Application

from tests.oidc_provider.validators import UNVERIFIED_EMAIL_GROUP


@csrf_exempt
@require_POST
def add_user(request: HttpRequest) -> JsonResponse:
    """username, password, email, email_verified ("true"/"false"), optional name -> {"sub": ...}."""
    data = request.POST
    user = User.objects.create_user(data["username"], data["email"], data["password"], first_name=data.get("name", ""))
    if data.get("email_verified", "true").lower() != "true":
        user.groups.add(Group.objects.get_or_create(name=UNVERIFIED_EMAIL_GROUP)[0])
    return JsonResponse({"sub": str(user.pk)}, status=201)


@csrf_exempt
@require_POST
def add_client(request: HttpRequest) -> JsonResponse:
    """client_id, client_secret, redirect_uri: a confidential authorization-code client signing with RS256."""
    data = request.POST
    Application.objects.create(
        name=data["client_id"],
        client_id=data["client_id"],
        # The plain secret: DOT hashes it on save (hash_client_secret), and checks what clients send against that.
        client_secret=data["client_secret"],
        redirect_uris=data["redirect_uri"],
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        algorithm=Application.RS256_ALGORITHM,
        # A first-party client as far as tests go: no consent page between login and redirect.
        skip_authorization=True,
    )
    return JsonResponse({"client_id": data["client_id"]}, status=201)


@csrf_exempt
@require_POST
def revoke_client(request: HttpRequest, client_id: str) -> JsonResponse:
    """Delete the client; its grants (codes) and tokens go with it, so none of them works any more."""
    deleted, _ = Application.objects.filter(client_id=client_id).delete()
    return JsonResponse({"deleted": deleted}, status=200 if deleted else 404)
