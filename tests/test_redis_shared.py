"""Two instances sharing one real redis-server: state created through one is seen by the other.

The rate-limit, key-pool and chat-room proofs live beside their features
(test_rate_limits.py, test_keypool.py, test_chatroom.py); these are the conversation and the
normal-mode replay cache.
"""

from __future__ import annotations

import hashlib
import uuid

import requests


def test_conversation_created_through_one_continues_through_the_other(
    live_server, upstream, redis_url
):
    env = {"API_KEY": "sk-x", "STORE_URL": redis_url, "SHARED_STATE_URL": redis_url}
    one, two = live_server(**env), live_server(**env)
    cid = requests.post(one.url + "/api/chatgpt/createTurbo", data="Be brief.", timeout=10).text
    first = requests.post(
        two.url + "/api/chatgpt/chat",
        data="first question",
        headers={"conversation": cid},
        timeout=10,
    )
    assert first.status_code == 200 and first.text == "echo: first question"
    second = requests.post(
        one.url + "/api/chatgpt/chat",
        data="second question",
        headers={"conversation": cid},
        timeout=10,
    )
    assert second.text == "echo: second question"
    assert [m["content"] for m in upstream.received[-1].json["messages"]] == [
        "Be brief.",
        "first question",
        "echo: first question",
        "second question",
    ]


def test_a_replayed_uuid_is_refused_by_the_other_instance(live_server, upstream, redis_url):
    env = {
        "API_KEY": "sk-x",
        "STORE_URL": redis_url,
        "AUTH_MODE": "normal",
        "AUTH_TOKEN": "shared-secret",
    }
    one, two = live_server(**env), live_server(**env)
    nonce = uuid.uuid4().hex
    headers = {"uuid": nonce, "token": hashlib.sha256(f"shared-secret{nonce}".encode()).hexdigest()}
    body = {"user_content": "hi"}
    assert requests.post(one.url + "/api", json=body, headers=headers, timeout=10).ok
    replay = requests.post(two.url + "/api", json=body, headers=headers, timeout=10)
    assert replay.status_code == 401
    assert replay.json()["data"]["error"] == "auth_replayed"
