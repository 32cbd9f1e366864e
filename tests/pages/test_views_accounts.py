import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db

SIGNUP = {"username": "{name}", "password1": "a-long-Passw0rd!", "password2": "a-long-Passw0rd!"}


def signup(client, name):
    return client.post("/accounts/signup/", {k: v.format(name=name) for k, v in SIGNUP.items()})


def test_the_first_account_becomes_the_administrator(client):
    signup(client, "first")
    signup(Client(), "second")
    users = {u.username: u for u in get_user_model().objects.all()}
    assert users["first"].is_staff and users["first"].is_superuser
    assert not users["second"].is_staff and not users["second"].is_superuser


def test_sign_up_logs_in_and_redirects(client):
    response = signup(client, "carol")
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_sign_up_reports_bad_input(client):
    response = client.post("/accounts/signup/", {"username": "dave", "password1": "x", "password2": "y"})
    assert response.status_code == 200
    assert not get_user_model().objects.filter(username="dave").exists()
    assert "password fields didn" in response.content.decode()


@override_settings(CHATSITE_ALLOW_SIGNUP=False)
def test_sign_up_can_be_closed(client):
    assert client.get("/accounts/signup/").status_code == 404
    assert signup(client, "eve").status_code == 404
    assert not get_user_model().objects.exists()
    assert b"/accounts/signup/" not in client.get("/accounts/login/").content


def test_login_and_logout(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


CSRF_POSTS = ["/c/new/", "/c/{id}/rename/", "/c/{id}/delete/", "/c/{id}/restore/", "/accounts/logout/"]


@pytest.mark.parametrize("path", CSRF_POSTS)
def test_state_changing_posts_need_the_csrf_token(alice, conversation, path):
    convo = conversation(alice, title="Untouched")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(path.format(id=convo.id), {"title": "changed"})
    assert response.status_code == 403
    convo.refresh_from_db()
    assert convo.title == "Untouched"


def test_signup_and_login_need_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    assert signup(client, "mallory").status_code == 403
    assert client.post("/accounts/login/", {"username": "x", "password": "y"}).status_code == 403
