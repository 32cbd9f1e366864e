"""The test OpenID Connect provider (tests/oidc_support.py) does what allauth's openid_connect needs.

Plain HTTP against the provider's process: discovery, its login page, the authorization-code flow
with PKCE S256, the token endpoint, RS256 ID tokens checked against its JWKS. No Chatsite involved.
"""

import base64
import hashlib
import secrets
import uuid
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import requests

REDIRECT_URI = "http://127.0.0.1:9/accounts/oidc/test/login/callback/"  # never contacted: redirects aren't followed
SCOPE = "openid email profile"


@pytest.fixture
def client_app(oidc_provider) -> dict:
    """A client of this test's own on the session's provider."""
    client = {"client_id": f"client-{uuid.uuid4().hex[:12]}", "client_secret": secrets.token_urlsafe(24)}
    oidc_provider.add_client(client["client_id"], client["client_secret"], REDIRECT_URI)
    return client


def new_user(provider, email_verified: bool = True) -> str:
    username = f"user-{uuid.uuid4().hex[:12]}"
    provider.add_user(username, "pw-" + username, f"{username}@example.com", email_verified)
    return username


def sign_in(provider, username: str) -> requests.Session:
    """A session signed in on the provider's login page, as a browser would: its CSRF token included."""
    session = requests.Session()
    session.get(provider.url + "/login/", timeout=10).raise_for_status()
    form = {"username": username, "password": "pw-" + username, "next": "/"}
    form["csrfmiddlewaretoken"] = session.cookies["oidc_provider_csrftoken"]
    response = session.post(provider.url + "/login/", data=form, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return session


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(provider, session: requests.Session, client_id: str, challenge: str, nonce: str = "n-1") -> str:
    """The code of an authorization request (state checked), as allauth makes it."""
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI, "scope": SCOPE}
    params |= {"state": "s-42", "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}
    response = session.get(provider.issuer + "/authorize/", params=params, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    location = urlparse(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == ["s-42"]
    return query["code"][0]


def exchange(provider, client: dict, code: str, verifier: str) -> requests.Response:
    """The token request, client_secret_post."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    return requests.post(provider.issuer + "/token/", data=data | client, timeout=10)


def verified_claims(provider, client: dict, id_token: str) -> dict:
    key = jwt.PyJWKClient(provider.issuer + "/.well-known/jwks.json").get_signing_key_from_jwt(id_token).key
    return jwt.decode(id_token, key, algorithms=["RS256"], audience=client["client_id"], issuer=provider.issuer)


def signed_in_code(provider, client: dict, email_verified: bool = True) -> tuple[str, str, str]:
    """(username, code, code_verifier) of a fresh user's sign-in."""
    username = new_user(provider, email_verified)
    verifier, challenge = pkce_pair()
    return username, authorize(provider, sign_in(provider, username), client["client_id"], challenge), verifier


def test_discovery_names_the_endpoints(oidc_provider):
    config = requests.get(oidc_provider.issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert config["issuer"] == oidc_provider.issuer
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        assert config[endpoint].startswith(oidc_provider.issuer + "/"), endpoint
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert "RS256" in config["id_token_signing_alg_values_supported"]


def test_code_flow_with_pkce_gives_a_signed_id_token(oidc_provider, client_app):
    username, code, verifier = signed_in_code(oidc_provider, client_app)
    response = exchange(oidc_provider, client_app, code, verifier)
    assert response.status_code == 200, response.text
    claims = verified_claims(oidc_provider, client_app, response.json()["id_token"])
    assert claims["email"] == f"{username}@example.com"
    assert claims["email_verified"] is True
    assert claims["preferred_username"] == username
    assert claims["name"] == username
    assert claims["nonce"] == "n-1"
    userinfo = requests.get(
        oidc_provider.issuer + "/userinfo/",
        headers={"Authorization": "Bearer " + response.json()["access_token"]},
        timeout=10,
    )
    assert userinfo.json() == {
        key: claims[key] for key in ("sub", "email", "email_verified", "preferred_username", "name")
    }


def test_a_wrong_code_verifier_is_refused(oidc_provider, client_app):
    _username, code, _verifier = signed_in_code(oidc_provider, client_app)
    response = exchange(oidc_provider, client_app, code, pkce_pair()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_a_revoked_clients_code_is_refused(oidc_provider, client_app):
    _username, code, verifier = signed_in_code(oidc_provider, client_app)
    oidc_provider.revoke_client(client_app["client_id"])
    response = exchange(oidc_provider, client_app, code, verifier)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_an_unverified_email_is_said_so(oidc_provider, client_app):
    _username, code, verifier = signed_in_code(oidc_provider, client_app, email_verified=False)
    # client_secret_basic this time: allauth may send the client's credentials either way.
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    auth = (client_app["client_id"], client_app["client_secret"])
    response = requests.post(oidc_provider.issuer + "/token/", data=data, auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    assert verified_claims(oidc_provider, client_app, response.json()["id_token"])["email_verified"] is False
