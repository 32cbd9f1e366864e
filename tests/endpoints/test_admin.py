"""The admin of models: endpoints with a write-only key, and each model's options (the real admin views)."""

import pytest
from django.contrib.auth.models import Group

from conversations.endpoints import catalog
from conversations.endpoints.registry import Registry
from conversations.live import state
from conversations.live.runners.local import LocalRunner
from conversations.models import Endpoint, ModelOption

pytestmark = pytest.mark.django_db

SECRET = "sk-never-shown-again"


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def test_an_endpoint_added_in_the_admin_keeps_its_key_unseen(staff_client):
    form = {"name": "gpu", "url": "http://10.0.0.5:8000/v1", "api_key": SECRET, "enabled": "on"}
    assert staff_client.post("/admin/conversations/endpoint/add/", form).status_code == 302
    endpoint = Endpoint.objects.get(name="gpu")
    assert endpoint.api_key == SECRET
    page = staff_client.get(f"/admin/conversations/endpoint/{endpoint.pk}/change/").content.decode()
    assert SECRET not in page and "gpu" in page
    # Saved again with the key left empty, it keeps the key; a new one replaces it.
    form["api_key"] = ""
    staff_client.post(f"/admin/conversations/endpoint/{endpoint.pk}/change/", form)
    assert Endpoint.objects.get(pk=endpoint.pk).api_key == SECRET
    form["api_key"] = "sk-new"
    staff_client.post(f"/admin/conversations/endpoint/{endpoint.pk}/change/", form)
    assert Endpoint.objects.get(pk=endpoint.pk).api_key == "sk-new"
    listed = staff_client.get("/admin/conversations/endpoint/").content.decode()
    assert "sk-new" not in listed


def test_the_registry_reads_the_admins_enabled_endpoints():
    Endpoint.objects.create(name="on", url="http://127.0.0.1:9/v1", api_key="k")
    Endpoint.objects.create(name="off", url="http://127.0.0.1:9/v1", enabled=False)
    models = Registry(endpoints={"env": {"url": "http://127.0.0.1:9/v1", "key": ""}})
    models.refresh()  # nothing listens on port 9: both are asked, and found down
    assert models.health() == {"env": {"status": "down", "models": []}, "on": {"status": "down", "models": []}}


def test_staff_rename_restrict_and_choose_the_default_model(staff_client, alice, engine):
    live = state.current()
    ModelOption.objects.create(model_id="smollm2")
    team = Group.objects.create(name="team")
    option = ModelOption.objects.get(model_id="smollm2")
    form = {"display_name": "SmolLM2 on llama.cpp", "offered": "on", "is_default": "on", "groups": [team.pk]}
    assert staff_client.post(f"/admin/conversations/modeloption/{option.pk}/change/", form).status_code == 302
    option.refresh_from_db()
    assert (option.name, option.is_default, list(option.groups.all())) == ("SmolLM2 on llama.cpp", True, [team])
    # alice is in no group: she sees the local model only, which is then her default.
    listed = catalog.models_for(alice, live.models)
    assert [m["id"] for m in listed["models"]] == [engine.info.model_name] and listed["default"] == "tiny-llama"
    alice.groups.add(team)
    listed = catalog.models_for(alice, live.models)
    assert {m["name"] for m in listed["models"]} == {"SmolLM2 on llama.cpp", "tiny-llama"}
    assert listed["default"] == "smollm2"  # the admin's default, though no endpoint serves it now
    assert next(m for m in listed["models"] if m["id"] == "smollm2")["available"] is False
    page = staff_client.get("/admin/conversations/modeloption/").content.decode()
    assert "no endpoint up" in page and "this site&#x27;s model" in page


def test_a_site_of_endpoints_is_ok_once_its_endpoints_were_asked(client, settings):
    # Before the first discovery pass it has no model to offer: a new chat would be refused.
    settings.CHAT_INFERENCE = "none"
    models = Registry(endpoints={"down": {"url": "http://127.0.0.1:9/v1", "key": ""}}, admin_endpoints=False)
    with state.swapped(state.Live(runner=LocalRunner(models))):
        starting = client.get("/healthz")
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        models.refresh()  # asked: down, so the site is up with no model available yet
        assert client.get("/healthz").json() == {
            "status": "ok",
            "mode": "none",
            "endpoints": {"down": {"status": "down", "models": []}},
        }
