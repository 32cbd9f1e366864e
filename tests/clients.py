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


def joined_tokens(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")
