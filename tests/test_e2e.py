"""End to end: a real daphne process with the real default model, a real WebSocket."""

import asyncio
import json

import pytest
import requests
import websockets

pytestmark = pytest.mark.e2e


def sign_up(base_url: str, username: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base_url}/accounts/signup/").raise_for_status()
    password = "a-long-Passw0rd!"
    response = session.post(
        f"{base_url}/accounts/signup/",
        data={"username": username, "password1": password, "password2": password,
              "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{base_url}/accounts/signup/"},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    return session


def new_conversation(session: requests.Session, base_url: str) -> str:
    response = session.post(
        f"{base_url}/c/new/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"], "temperature": "0"},
        headers={"Referer": f"{base_url}/"},
        allow_redirects=False,
    )
    assert response.status_code == 302
    return response.headers["Location"].strip("/").split("/")[-1]


async def chat_turn(ws_url: str, cookies: str, origin: str, text: str) -> list[dict]:
    headers = {"Cookie": cookies, "Origin": origin}
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        await socket.send(json.dumps({"type": "send", "content": text, "params": {"max_new_tokens": 24}}))
        frames = []
        while not frames or frames[-1]["type"] not in ("end", "error"):
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=120)))
        return frames


def test_a_user_chats_with_the_real_model_over_a_real_socket(daphne_server):
    base = daphne_server.url
    health = requests.get(f"{base}/healthz").json()
    assert health["status"] == "ok" and health["device"] == "cpu"

    session = sign_up(base, "erin")
    conversation_id = new_conversation(session, base)
    cookies = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    frames = asyncio.run(chat_turn(f"{daphne_server.ws_url}/ws/chat/{conversation_id}/", cookies, base,
                                   "What is the capital of France?"))

    assert [f["type"] for f in frames][:2] == ["message", "start"]
    assert frames[-1]["type"] == "end", frames[-1]
    streamed = "".join(f["text"] for f in frames if f["type"] == "token")
    assert streamed.strip()
    assert "Paris" in streamed

    stored = session.get(f"{base}/api/conversations/{conversation_id}/").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == streamed
    assert stored["messages"][1]["status"] == "complete"
    assert stored["title"] == "What is the capital of France?"


def test_a_foreign_origin_is_refused_by_the_real_server(daphne_server):
    session = sign_up(daphne_server.url, "frank")
    conversation_id = new_conversation(session, daphne_server.url)
    cookies = "; ".join(f"{k}={v}" for k, v in session.cookies.items())

    async def attempt():
        async with websockets.connect(f"{daphne_server.ws_url}/ws/chat/{conversation_id}/",
                                      additional_headers={"Cookie": cookies, "Origin": "http://evil.example"}):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(attempt())
