"""The chat-room face of ChatGPT-API on gin: a conversation kept on the server.

``POST /{ROUTE}/chat-room`` with ``{"role": "user"|"system"|"assistant" (default user),
"content": <non-empty string>, "name": <optional string>}`` answers
``{"code":200,"msg":"success","data":<answer text>}``. ``POST /{ROUTE}/chat-room/stream``
takes the same body and answers Server-Sent Events: every OpenAI chunk as the backend produced
it (``data: {"object":"chat.completion.chunk",...}``), then
``data: {"code":200,"msg":"success","data":""}`` and ``data: [DONE]`` (the original wrote bare
chunks with no SSE framing). ``POST /{ROUTE}/chat-room/reset`` forgets the room's history and
answers ``{"code":200,"msg":"success","data":""}``.

A room is named by the ``X-Room-Id`` header (1..128 of ``[A-Za-z0-9_.:-]``), else by the
client IP (after TRUSTED_PROXIES). Its history lives in the shared state (memory or Redis, as
SHARED_STATE_URL says) as a JSON list of messages, expiring CONVERSATION_TTL seconds
after the last successful turn. The model is sent BOT_DESC as the system message, then the
history, then the new turn; a successful turn appends the turn and the answer and keeps the
newest HISTORY_MAX_MESSAGES messages. A failed turn leaves the history as it was.

One turn at a time per room, across workers (a lock beside the history, taken with the
state's atomic add): a turn or reset meanwhile answers 409 ``chat_room_busy``. A stream holds
the lock until it ends or the client goes away; the lock is renewed while the turn runs, so
a dead worker's lock lapses within LOCK_TTL (15 s), as a conversation's does.

Sampling comes from the original's settings: model CHAT_MODEL (else DEFAULT_MODEL), CHAT_MAXTOKENS,
CHAT_TEMPERATURE, CHAT_TOPP, CHAT_PRESENCEPENALTY, CHAT_FREQUENCYPENALTY; unset ones are not
sent, so the upstream's own defaults apply.

Failure (400 bad body or room id, 409 busy room, 429, 502/503/504 upstream): HTTP status
equal to ``code``,
``{"code":<status>,"msg":<localized reason>,"data":null,"error":<stable key>}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from chatservice import specs
from chatservice.conversations import LOCK_TTL, renew_lock
from chatservice.errors import BadRequest, ServiceError, UpstreamError
from chatservice.models import ChatChunk, ChatRequest, for_model
from chatservice.pipeline import answer, respond
from chatservice.routes import add_post_rule
from chatservice.service import current_service
from chatservice.settings import Settings
from chatservice.state import KeyValueStore
from chatservice.web import read_json_object

log = logging.getLogger(__name__)

ROOM_HEADER = "X-Room-Id"
_ROOM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: The CHAT_* settings sent under OpenAI's names when set (ChatGPT-API on gin's model parameters).
SAMPLING = {
    "temperature": "chat_temperature",
    "top_p": "chat_top_p",
    "presence_penalty": "chat_presence_penalty",
    "frequency_penalty": "chat_frequency_penalty",
}
SUCCESS_DONE = {"code": 200, "msg": "success", "data": ""}


def prefix(route: str) -> str:
    """The face's path prefix: ``{ROUTE}/chat-room``."""
    return f"{route}/chat-room"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint: POST ``/chat-room``, ``/chat-room/stream``, ``/chat-room/reset``."""
    blueprint = Blueprint("chatroom", __name__)
    base = prefix(route)
    add_post_rule(blueprint, base, chat_room)
    add_post_rule(blueprint, base + "/stream", chat_room_stream)
    add_post_rule(blueprint, base + "/reset", chat_room_reset)
    return blueprint


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """The face's failure envelope: ``code`` is the HTTP status, ``error`` the stable key."""
    return {"code": err.status, "msg": message, "data": None, "error": err.key}


class Room:
    """One room's history in the shared state.

    :param state: where histories live (:class:`~chatservice.state.KeyValueStore`).
    :param key: the state key, ``room:id:<X-Room-Id>`` or ``room:ip:<client IP>``.
    :param ttl: seconds of idleness after which the history is forgotten (CONVERSATION_TTL).
    :param max_messages: how many messages are kept, newest first (HISTORY_MAX_MESSAGES).
    :param lock_ttl: seconds a turn lock lives unless renewed; a running turn renews it, so
        only a dead worker's lock lapses, within this time.
    """

    def __init__(
        self,
        state: KeyValueStore,
        key: str,
        ttl: float,
        max_messages: int,
        lock_ttl: float = LOCK_TTL,
    ) -> None:
        self.state = state
        self.key = key
        self.ttl = ttl
        self.max_messages = max_messages
        self.lock_ttl = lock_ttl
        self._renewer: threading.Event | None = None

    def acquire(self) -> str:
        """Take the room's turn lock; the token to :meth:`release` it with.

        Raises ``ServiceError`` ``chat_room_busy`` (409) while another turn holds it.
        """
        token = secrets.token_hex(8)
        if not self.state.add(f"lock:{self.key}", token, ttl=self.lock_ttl):
            raise ServiceError("chat_room_busy")
        self._renewer = renew_lock(self.state, f"lock:{self.key}", token, self.lock_ttl)
        return token

    def release(self, token: str) -> None:
        """Release the lock if ``token`` still holds it (never someone else's); idempotent."""
        if self._renewer is not None:
            self._renewer.set()
            self._renewer = None
        self.state.delete_if(f"lock:{self.key}", token)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """``with room.locked():`` holds the turn lock for the block (409 when busy)."""
        token = self.acquire()
        try:
            yield
        finally:
            self.release(token)

    def history(self) -> list[dict[str, str]]:
        """The stored messages, oldest first, without the system prompt; ``[]`` when none."""
        raw = self.state.get(self.key)
        if raw is None:
            return []
        try:
            messages = json.loads(raw)
        except ValueError:
            messages = None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            # Only this face writes the key; a bad value must not lock the room forever.
            log.warning("unreadable chat-room history, starting afresh")
            return []
        return messages

    def save(self, messages: list[dict[str, str]]) -> None:
        """Store the newest ``max_messages`` of ``messages``, expiring ``ttl`` from now."""
        kept = messages[-self.max_messages :]
        self.state.set(self.key, json.dumps(kept, ensure_ascii=False), ttl=self.ttl)

    def reset(self) -> None:
        """Forget the history."""
        self.state.delete(self.key)


def current_room() -> Room:
    """The room of this request: the ``X-Room-Id`` header, else the client IP.

    The two kinds of name get separate key spaces, so a client cannot reach another
    client's IP-keyed room by sending that IP as its room id. Raises ``BadRequest``
    (``invalid_room_id``) for a header that is present but malformed.
    """
    service = current_service()
    room_id = request.headers.get(ROOM_HEADER)
    if room_id is not None:
        if not _ROOM_ID.fullmatch(room_id):
            raise BadRequest("invalid_room_id")
        key = f"room:id:{room_id}"
    else:
        key = f"room:ip:{request.remote_addr or 'unknown'}"
    settings = service.settings
    return Room(
        service.shared_state,
        key,
        settings.conversation_ttl,
        settings.history_max_messages,
    )


def read_turn(body: dict[str, Any]) -> dict[str, str]:
    """Validate the body into one message ``{"role", "content"[, "name"]}``.

    As :data:`chatservice.specs.ROOM_TURN` says: ``role`` defaults to ``user``; ``content``
    must be a non-empty string; ``name`` (an optional non-empty string) is forwarded to the
    model. Raises ``BadRequest``.
    """
    fields = specs.ROOM_TURN.read(body)
    return {name: value for name, value in fields.items() if value is not None}


def build_request(
    history: list[dict[str, str]], turn: dict[str, str], settings: Settings, stream: bool
) -> ChatRequest:
    """The model request: BOT_DESC as the system message, the history, then ``turn``
    (as a transcript prompt for a completion model).
    """
    params = {
        name: getattr(settings, attr)
        for name, attr in SAMPLING.items()
        if getattr(settings, attr) is not None
    }
    req = ChatRequest(
        kind="chat",
        model=settings.chat_model or settings.default_model,
        max_tokens=settings.chat_max_tokens,
        messages=[{"role": "system", "content": settings.bot_desc}, *history, turn],
        params=params,
        stream=stream,
        trim=True,
    )
    return for_model(req)


def chat_room() -> Response:
    """POST /{ROUTE}/chat-room: one turn, answered as a whole."""
    room = current_room()
    turn = read_turn(read_json_object())
    with room.locked():
        history = room.history()
        req = build_request(history, turn, current_service().settings, stream=False)
        result = answer(req)
        room.save([*history, turn, {"role": "assistant", "content": result.text}])
    return jsonify({"code": 200, "msg": "success", "data": result.text})


def chat_room_stream() -> Response:
    """POST /{ROUTE}/chat-room/stream: one turn, answered as Server-Sent Events.

    OpenAI chunks as they come, then ``{"code":200,"msg":"success","data":""}`` and
    ``[DONE]``. An error before the first event is an ordinary JSON error; after it, one
    error event ends the stream without ``[DONE]`` and the history is left unchanged.
    """
    room = current_room()
    turn = read_turn(read_json_object())
    token = room.acquire()

    def release() -> None:
        room.release(token)

    try:
        history = room.history()
        req = build_request(history, turn, current_service().settings, stream=True)
        response = respond(
            req,
            render_result=lambda result: result.raw,
            render_chunk=lambda chunk: chunk.raw,
            render_error=render_error,
            every_chunk=True,
            wrap=lambda chunks: _recorded(chunks, room, [*history, turn], release),
            final_event=SUCCESS_DONE,
        )
    except BaseException:
        release()
        raise
    # _recorded releases the lock; this covers a response closed before its first event.
    response.call_on_close(release)
    return response


def chat_room_reset() -> Response:
    """POST /{ROUTE}/chat-room/reset: forget the room's history."""
    room = current_room()
    with room.locked():
        room.reset()
    return jsonify(SUCCESS_DONE)


def _recorded(
    chunks: Iterator[ChatChunk],
    room: Room,
    messages: list[dict[str, str]],
    release: Callable[[], None],
) -> Iterator[ChatChunk]:
    """Relay ``chunks``; once the answer finished, store it after ``messages`` in ``room``.

    A stream that ends without a finish reason is an interrupted answer: it raises
    ``upstream_interrupted`` and stores nothing. However it ends, ``release`` (the room's
    turn lock) is called first, then ``chunks`` closed: closing this generator (client gone)
    thus frees the room before the upstream request or the local generation is stopped.
    """
    parts: list[str] = []
    finished = False
    try:
        for chunk in chunks:
            parts.append(chunk.text)
            finished = finished or chunk.finish_reason is not None
            yield chunk
        if not finished:
            raise UpstreamError("upstream_interrupted")
        room.save([*messages, {"role": "assistant", "content": "".join(parts)}])
    finally:
        release()
        chunks.close()  # type: ignore[attr-defined]
