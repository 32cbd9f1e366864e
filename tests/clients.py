"""Clients for end-to-end tests: a browser's HTTP session (requests) and its chat socket (websockets)."""

from __future__ import annotations

import asyncio
import json

import requests
import websockets

PASSWORD = "a-long-Passw0rd!"


def sign_up(base_url: str, username: str) -> requests.Session:
    """A session signed up (and so logged in) as `username`."""
    session = requests.Session()
    session.get(f"{base_url}/accounts/signup/").raise_for_status()
    response = session.post(
        f"{base_url}/accounts/signup/",
        data={
            "username": username,
            "password1": PASSWORD,
            "password2": PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": f"{base_url}/accounts/signup/"},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    return session


def new_conversation(session: requests.Session, base_url: str) -> str:
    """A new greedy conversation; returns its id."""
    response = session.post(
        f"{base_url}/c/new/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"], "temperature": "0"},
        headers={"Referer": f"{base_url}/"},
        allow_redirects=False,
    )
    assert response.status_code == 302
    return response.headers["Location"].strip("/").split("/")[-1]


def cookie_header(session: requests.Session) -> str:
    return "; ".join(f"{k}={v}" for k, v in session.cookies.items())


def open_socket(ws_base: str, conversation_id: str, session: requests.Session, origin: str):
    """websockets.connect(...) for the conversation's chat socket, as the browser would open it."""
    return websockets.connect(
        f"{ws_base}/ws/chat/{conversation_id}/", additional_headers={"Cookie": cookie_header(session), "Origin": origin}
    )


async def frames_until_end(socket, timeout: float = 60) -> list[dict]:
    """Frames up to and including the next `end`."""
    frames = []
    while not frames or frames[-1]["type"] != "end":
        frames.append(json.loads(await asyncio.wait_for(socket.recv(), timeout=timeout)))
    return frames


def ends_in_error(frames: list[dict]) -> bool:
    """`error`, then `end`; between them at most the one `token` with text the socket missed
    (recorded but not yet published when the reply was cut off: docs/protocol.md)."""
    kinds = [frame["type"] for frame in frames]
    return kinds[-2:] == ["error", "end"] or kinds[-3:] == ["error", "token", "end"]


def stored(session: requests.Session, base_url: str, conversation_id: str) -> dict:
    """The conversation as `/api/conversations/<id>/` gives it."""
    return session.get(f"{base_url}/api/conversations/{conversation_id}/").json()


def wait_ended(session: requests.Session, base_url: str, conversation_id: str, timeout: float = 60) -> dict:
    """The conversation once its last reply has ended, however it ends (in the server's own time).

    A tab opened on the conversation hears the reply's `end`: the socket joins
    first, then the stored status is read, so an end is either already
    stored or still to come to the tab.
    """

    async def until_ended() -> dict:
        ws_base = "ws" + base_url.removeprefix("http")
        async with open_socket(ws_base, conversation_id, session, base_url) as tab:
            conversation = stored(session, base_url, conversation_id)
            if conversation["messages"][-1]["status"] == "streaming":
                await frames_until_end(tab, timeout)
        return stored(session, base_url, conversation_id)

    return asyncio.run(until_ended())


def joined_tokens(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")


def shown_text(frames: list[dict]) -> str:
    """The reply as a tab shows it: the text its `start` carried, then its tokens. A socket still finishing its
    handshake when the reply began gets the text so far in `start` (docs/protocol.md), not as tokens."""
    start = next((f for f in frames if f["type"] == "start"), {})
    return start.get("content", "") + joined_tokens(frames)
