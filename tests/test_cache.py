"""The exact-match response cache: hits and misses, opt-outs, isolation between upstream keys,
streamed replays, what is never stored, and single flight across two instances with Redis.
"""

from __future__ import annotations

import concurrent.futures
import json

import requests

from tests.fakeupstream import Reply

KEY = "sk-test-configured-0001"
CHAT = "/api/v1/chat/completions"


def body(content: str = "Hello", **extra) -> dict:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        **extra,
    }


def events(response) -> list:
    return [
        block[len("data: ") :]
        for block in response.get_data(as_text=True).split("\n\n")
        if block.startswith("data: ")
    ]


def chat_calls(fake) -> int:
    return sum(item.path.endswith("/chat/completions") for item in fake.received)


def test_identical_deterministic_requests_hit(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://").test_client()
    first = client.post(CHAT, json=body())
    second = client.post(CHAT, json=body())
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.get_json() == first.get_json()
    assert chat_calls(fake) == 1
    # Any difference in the request is another entry.
    third = client.post(CHAT, json=body(max_tokens=5))
    assert third.headers["X-Cache"] == "MISS" and chat_calls(fake) == 2


def test_the_platform_face_and_chat_room_use_it_too(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://", CHAT_TEMPERATURE="0").test_client()
    for _ in range(2):
        client.post("/api/chat-room/reset", headers={"X-Room-Id": "r"})
        response = client.post("/api/chat-room", json={"content": "hi"}, headers={"X-Room-Id": "r"})
        assert response.status_code == 200
    assert response.headers["X-Cache"] == "HIT"
    assert chat_calls(fake) == 1


def test_sampled_requests_are_not_cached(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://").test_client()
    for _ in range(2):
        response = client.post(CHAT, json=body(temperature=0.7))
        assert "X-Cache" not in response.headers
    assert chat_calls(fake) == 2
    # A seed makes a sampled request repeatable.
    for _ in range(2):
        response = client.post(CHAT, json=body(temperature=0.7, seed=1))
    assert response.headers["X-Cache"] == "HIT" and chat_calls(fake) == 3


def test_off_by_default(client, fake):
    for _ in range(2):
        assert "X-Cache" not in client.post(CHAT, json=body()).headers
    assert chat_calls(fake) == 2


def test_no_cache_skips_the_lookup_and_no_store_keeps_the_answer_out(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://").test_client()
    client.post(CHAT, json=body("a"), headers={"Cache-Control": "no-store"})
    assert client.post(CHAT, json=body("a")).headers["X-Cache"] == "MISS"  # nothing stored
    fresh = client.post(CHAT, json=body("a"), headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "MISS"
    assert chat_calls(fake) == 3
    assert client.post(CHAT, json=body("a")).headers["X-Cache"] == "HIT"


def test_per_request_keys_never_read_each_others_answers(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://").test_client()
    alice = {"Authorization": "Bearer sk-alice-000000000001"}
    bob = {"Authorization": "Bearer sk-bob-00000000000002"}
    assert client.post(CHAT, json=body(), headers=alice).headers["X-Cache"] == "MISS"
    assert client.post(CHAT, json=body(), headers=bob).headers["X-Cache"] == "MISS"
    assert client.post(CHAT, json=body()).headers["X-Cache"] == "MISS"  # the service's keys
    assert client.post(CHAT, json=body(), headers=alice).headers["X-Cache"] == "HIT"
    assert chat_calls(fake) == 3
    # The Docker ChatGPT API platform's per-request api_key is an owner too.
    own_key = {"user_content": "x", "api_key": "sk-carol-0000000001"}
    client.post("/api", json=own_key)
    assert "X-Cache" not in client.post("/api", json=own_key).headers  # no temperature: no cache


def test_a_streamed_hit_replays_the_same_stream(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://").test_client()
    first = client.post(CHAT, json=body("one two three", stream=True), buffered=True)
    second = client.post(CHAT, json=body("one two three", stream=True), buffered=True)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert second.mimetype == "text/event-stream"
    assert events(second) == events(first)
    assert events(second)[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events(second)[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "echo: one two three"
    assert chat_calls(fake) == 1
    # A whole answer is another entry than a stream.
    assert client.post(CHAT, json=body("one two three")).headers["X-Cache"] == "MISS"


def test_errors_and_partial_streams_are_never_cached(make_app, fake):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://", UPSTREAM_RETRIES="0").test_client()
    fake.push(Reply(status=500, body={"error": {"code": "boom"}}))
    assert client.post(CHAT, json=body("e")).status_code == 502
    assert client.post(CHAT, json=body("e")).headers["X-Cache"] == "MISS"
    fake.push(Reply(text="a b c d", drop_after=2))
    broken = client.post(CHAT, json=body("p", stream=True), buffered=True)
    assert "upstream_interrupted" in broken.get_data(as_text=True)
    again = client.post(CHAT, json=body("p", stream=True), buffered=True)
    assert again.headers["X-Cache"] == "MISS"
    assert events(again)[-1] == "[DONE]"


def test_access_log_and_metrics_tell_cached_answers_apart(make_app, fake, caplog):
    client = make_app(API_KEY=KEY, CACHE_URL="memory://").test_client()
    with caplog.at_level("INFO", logger="chatservice.access"):
        client.post(CHAT, json=body(), headers={"X-Request-ID": "c1"})
        client.post(CHAT, json=body(), headers={"X-Request-ID": "c2"})
    lines = {r.access["request_id"]: r.access for r in caplog.records if hasattr(r, "access")}
    assert lines["c1"]["cache"] == "MISS" and lines["c2"]["cache"] == "HIT"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'chatservice_tokens_total{backend="cache",direction="in"} 5.0' in metrics
    assert 'chatservice_tokens_total{backend="upstream",direction="in"} 5.0' in metrics


def test_single_flight_across_two_instances_through_redis(live_server, fake, redis_url):
    servers = [
        live_server(API_KEY=KEY, CACHE_URL=redis_url, WORKERS="2", UPSTREAM_RETRIES="0")
        for _ in range(2)
    ]
    # Slow enough that all 20 requests arrive while the first one is being answered.
    fake.push(Reply(delay=1.5))

    def ask(index: int) -> tuple[int, str, str]:
        url = servers[index % 2].url + CHAT
        response = requests.post(url, json=body("together"), timeout=60)
        return response.status_code, response.headers.get("X-Cache", ""), response.text

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(ask, range(20)))
    assert {status for status, _, _ in results} == {200}
    assert len({text for _, _, text in results}) == 1
    assert sorted(cache for _, cache, _ in results).count("MISS") == 1
    assert chat_calls(fake) == 1


def test_the_memory_store_is_bounded():
    from chatservice.cache import MemoryEntries

    entries = MemoryEntries(size=10, ttl=60)
    entries.set("a", "12345")
    entries.set("b", "12345")
    entries.set("c", "12345")  # over 10 characters: the least recently used goes
    assert (entries.get("a"), entries.get("b"), entries.get("c")) == (None, "12345", "12345")
    entries.set("huge", "x" * 11)  # larger than the whole store: not kept, nothing evicted
    assert entries.get("huge") is None and entries.get("c") == "12345"


def test_a_call_that_claims_the_lock_just_after_the_holder_finished_reads_its_answer():
    # The race behind a second MISS among identical calls: the lock's holder stores its
    # answer and releases the lock between a waiting call's read of the entry and its claim
    # of the lock. Storage here is the memory store, the interleaving forced at that read.
    from chatservice.backends import Route
    from chatservice.cache import MemoryEntries, ResponseCache, cache_key
    from chatservice.models import ChatRequest
    from chatservice.pipeline import Call
    from chatservice.state import MemoryState

    call = Call(
        request=ChatRequest(
            kind="chat",
            model="gpt-4o-mini",
            max_tokens=None,
            messages=[{"role": "user", "content": "hi"}],
            params={"temperature": 0},
        ),
        route=Route("upstream", None),  # type: ignore[arg-type]
        asked_model="gpt-4o-mini",
        streamed=False,
    )
    key = cache_key(call)
    answer = {"text": "stored by the holder"}
    holder_token = "holder"

    class HolderFinishesAfterTheFirstRead(MemoryEntries):
        reads = 0

        def get(self, name: str) -> str | None:
            value = super().get(name)
            self.reads += 1
            if self.reads == 1:  # the holder ends right after the waiting call's first read
                cache.put(key, answer)
                cache.release(key, holder_token)
            return value

    state = MemoryState()
    cache = ResponseCache(state, 60, 5, HolderFinishesAfterTheFirstRead(1 << 20, 60))
    assert state.add(f"cache-lock:{key}", holder_token, ttl=5)
    lookup = cache.lookup(call)
    assert lookup.status == "HIT"
    assert lookup.entry == answer
    # Nothing left holding the lock: the next identical miss can claim it.
    assert state.add(f"cache-lock:{key}", "next", ttl=5)
