"""The conversations face of Alice ChatGPT under ``/{ROUTE}/chatgpt/``.

Plain-text bodies and answers (``text/plain; charset=utf-8``), as in the original; a conversation
is named by the ``conversation`` header. All POST unless said:

- ``create`` (header ``settings``: empty or ``FriendChat``; body: the prompt, empty for the
  original's default), ``createTurbo`` (a plain-text prompt, or a JSON object ``{"prompt",
  "stream"}``), ``createGPT4`` (a plain-text prompt), ``createRolePlay`` (JSON
  ``{"human_name", "ai_name", "prompt"}``, all required): the new conversation's id.
- ``chat`` (body: the question): the answer. ``regenerate``: a new answer to the last
  question, replacing the old one. ``rollback``: drops the last question and answer,
  ``Rollback Succeeded``. ``context``: the transcript. ``contextArray``: questions and answers
  alternating, as a JSON array of strings. ``finish``: deletes it, ``Conversation finished``.
- ``store``: keeps a copy for sharing (again: overwrites it), ``保存成功`` (the original's answer),
  with the read-only share id in the ``X-Share-Id`` header; ``GET share/<share id>``:
  ``{"Id", "Prompt", "SentenceList"}`` as JSON, ``Id`` being the share id. The original's own
  ``GET share/<conversation id>`` (``Id``: the conversation id, which lets anyone holding the
  link continue, read or finish the conversation) works while SHARE_BY_CONVERSATION_ID is on.
- ``quickAnswer`` (JSON ``prompt``, ``examples`` (questions and answers alternating),
  ``question`` (required), ``convType`` (``gpt3``, ``turbo`` (default) or ``gpt4``),
  ``stream`` (default false: the README's plain answer)): a one-off answer.
  ``summary`` (body: the text): its summary.

Streams (a createTurbo conversation made with ``"stream": true`` answers ``chat`` and
``regenerate`` so; ``quickAnswer`` with ``"stream": true``) are Server-Sent Events: one
``data: <JSON string>`` event per piece of the answer (JSON, so newlines in the answer cannot
break the framing), then ``data: [DONE]``. A failure before the first event is an ordinary
error; after it, one event ``{"error": <stable key>, "message": <localized>}`` ends the stream.

Presets and models: :mod:`chatservice.conversations`. A turn sends the newest
MAX_CONTEXT_MESSAGES earlier messages (whole turns); when the model still answers
``context_length_exceeded``, it is retried without the oldest earlier turn, at most twice
(``quickAnswer``'s examples likewise). Conversations expire CONVERSATION_TTL seconds after the
last turn or read; shared copies never do. ``share`` needs no credentials under AUTH_MODE.

One turn at a time per conversation (``chat``, ``regenerate``, ``rollback``, ``finish``), across
workers: another one meanwhile answers 409. A failed or interrupted turn leaves the conversation
as it was. Errors are the localized message as plain text with the error's status: 400 (empty
question, bad JSON, missing role-play field, unknown ``settings``), 404 (unknown or expired
conversation, unknown share id), 409 (a turn is running; nothing to regenerate or roll back),
429, 502/503/504 (upstream).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from flask import Blueprint, Response, jsonify, request

from chatservice import specs
from chatservice.auth import exempt
from chatservice.conversations import (
    CONTEXT_RETRIES,
    CREATE_SETTINGS,
    PRESETS,
    QUICK_TYPES,
    Conversation,
    ConversationStore,
    Exchange,
    Summary,
    Turn,
    is_valid_id,
)
from chatservice.errors import BadRequest, NotFound, ServiceError, UpstreamError
from chatservice.models import ChatChunk, ChatRequest
from chatservice.pipeline import current_pipeline
from chatservice.routes import add_post_rule
from chatservice.service import current_service
from chatservice.settings import Settings
from chatservice.sse import event_stream
from chatservice.web import read_json_object, request_language

CONVERSATION_HEADER = "conversation"
SETTINGS_HEADER = "settings"
ROLLED_BACK = "Rollback Succeeded"
FINISHED = "Conversation finished"
STORED = "保存成功"
#: The header of the store answer naming the read-only share id.
SHARE_ID_HEADER = "X-Share-Id"


def prefix(route: str) -> str:
    """The face's path prefix: ``{ROUTE}/chatgpt``."""
    return f"{route}/chatgpt"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint: the original's POST endpoints and ``GET share/<id>``."""
    blueprint = Blueprint("conversations", __name__)
    base = prefix(route)
    views = {
        "create": create,
        "createTurbo": create_turbo,
        "createGPT4": create_gpt4,
        "createRolePlay": create_role_play,
        "chat": chat,
        "regenerate": regenerate,
        "rollback": rollback,
        "context": context,
        "contextArray": context_array,
        "finish": finish,
        "store": store,
        "quickAnswer": quick_answer,
        "summary": summary,
    }
    for name, view in views.items():
        add_post_rule(blueprint, f"{base}/{name}", view)
    blueprint.add_url_rule(
        f"{base}/share/<share_id>", view_func=share, methods=["GET"], strict_slashes=False
    )
    return blueprint


def render_error(err: ServiceError, message: str) -> str:
    """The face's error body: the localized message alone, as plain text.

    The shared error handler jsonifies what renderers return, so until it sends a returned
    ``str`` as ``text/plain`` this arrives as a JSON string.
    """
    return message


# --- plumbing --------------------------------------------------------------------------------


def plain(text: str) -> Response:
    """A ``text/plain; charset=utf-8`` answer."""
    return Response(text, mimetype="text/plain")


def read_text() -> str:
    """The request body as UTF-8 text; raises ``BadRequest`` (``invalid_text_body``)."""
    try:
        return request.get_data(cache=True).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("invalid_text_body") from None


def conversation_store() -> ConversationStore:
    """The app's conversations, in its store (STORE_URL)."""
    service = current_service()
    settings = service.settings
    return ConversationStore(
        service.conversation_store,
        settings.conversation_ttl,
        max_bytes=settings.conversation_max_bytes,
    )


def conversation_id() -> str:
    """The ``conversation`` header; raises ``BadRequest`` when it is missing or empty and
    ``NotFound`` when it cannot be an id (so no lock is ever taken for it).
    """
    conv_id = request.headers.get(CONVERSATION_HEADER, "").strip()
    if not conv_id:
        raise BadRequest("conversation_header_missing")
    if not is_valid_id(conv_id):
        raise NotFound("conversation_not_found")
    return conv_id


class _Asks(Protocol):
    def model(self, settings: Settings) -> str: ...

    def request(self, settings: Settings, *, stream: bool, embedded: bool) -> ChatRequest: ...


@dataclasses.dataclass(frozen=True)
class _Draft:
    """``asks`` as the pipeline's :class:`~chatservice.pipeline.Draft`: the pipeline routes on
    the preset's model and builds the request once, in the form the answering backend needs
    (served by the embedded model every preset is a chat: it has no completion model).
    """

    asks: _Asks
    settings: Settings
    stream: bool
    api_key: None = None

    @property
    def model(self) -> str:
        return self.asks.model(self.settings)

    def build(self, embedded: bool) -> ChatRequest:
        return self.asks.request(self.settings, stream=self.stream, embedded=embedded)

    def shorter(self) -> _Draft | None:
        """The draft without its oldest earlier turn (the pipeline's context step), or
        ``None`` when only the question is left.
        """
        if not isinstance(self.asks, Exchange) or not self.asks.history:
            return None
        return dataclasses.replace(self, asks=self.asks.without_oldest())


def _draft(asks: _Asks, stream: bool) -> _Draft:
    return _Draft(asks, current_service().settings, stream)


def _fitting(asks: _Asks, attempt: Callable[[Any], Any]) -> Any:
    """``attempt(asks)``; when the model says the history is too long, again without the
    oldest earlier turn, up to :data:`CONTEXT_RETRIES` times (MAX_CONTEXT_MESSAGES bounds the
    messages; this bounds the tokens, which only the model counts).
    """
    retries = 0
    while True:
        try:
            return attempt(asks)
        except BadRequest as err:
            if (
                err.key != "context_length_exceeded"
                or retries >= CONTEXT_RETRIES
                or not isinstance(asks, Exchange)
                or not asks.history
            ):
                raise
            asks = asks.without_oldest()
            retries += 1


def answer_of(asks: _Asks) -> str:
    """The model's whole answer to ``asks``, without surrounding whitespace (a transcript
    answer starts with the space after ``AI:``).
    """

    def attempt(current: _Asks) -> str:
        return current_pipeline().answer(_draft(current, stream=False)).text.strip()

    return _fitting(asks, attempt)


def stream_of(
    asks: _Asks,
    on_answer: Callable[[str], None] = lambda answer: None,
    on_end: Callable[[], None] = lambda: None,
) -> Response:
    """The answer to ``asks`` as Server-Sent Events of JSON strings, then ``[DONE]``.

    The first chunk is awaited here, so failures before it (with the history retry of
    :func:`answer_of`) raise as ordinary errors. ``on_answer(text)`` runs once the whole
    answer arrived, before ``[DONE]``; ``on_end()`` runs however the stream ends: finished,
    failed, or closed because the client left.
    """
    pipeline = current_pipeline()
    lang = request_language()

    def attempt(current: _Asks) -> tuple[Iterator[ChatChunk], ChatChunk | None]:
        chunks = pipeline.stream(_draft(current, stream=True))
        try:
            return chunks, next(chunks, None)
        except BaseException:
            chunks.close()  # type: ignore[attr-defined]
            raise

    chunks, first = _fitting(asks, attempt)

    def relay() -> Iterator[ChatChunk]:
        parts: list[str] = []
        finished = False
        try:
            for chunk in itertools.chain([] if first is None else [first], chunks):
                finished = finished or chunk.finish_reason is not None
                # A transcript answer starts with the space after "AI:": not part of it.
                text = chunk.text if parts else chunk.text.lstrip()
                if text:
                    parts.append(text)
                    yield dataclasses.replace(chunk, text=text)
            if not finished:
                raise UpstreamError("upstream_interrupted")
            on_answer("".join(parts).strip())
        finally:
            try:
                chunks.close()  # type: ignore[attr-defined]
            finally:
                on_end()

    def stream_error(err: ServiceError) -> dict[str, Any]:
        return {"error": err.key, "message": pipeline.localize(err, lang)}

    return event_stream(relay(), lambda chunk: chunk.text, stream_error)


def _turn(conv_id: str, question: str | None) -> Response:
    """Answer ``question`` in the conversation (``None``: regenerate the last answer).

    Holds the conversation's turn lock until the answer is stored or failed; a stream holds
    it until the stream ends. Nothing is stored unless the answer is complete.
    """
    convs = conversation_store()
    token: str | None = convs.acquire(conv_id)
    try:
        conv = convs.load(conv_id)
        kept: list[Turn] = list(conv.turns)
        if question is None:
            if not kept:
                raise ServiceError("conversation_empty")
            question = kept.pop()[0]
        settings = current_service().settings
        exchange = conv.exchange(question, kept, settings.max_context_messages)

        def store_answer(answer: str) -> None:
            conv.turns = [*kept, (exchange.question, answer)]
            convs.save(conv)

        if conv.stream:
            held = token
            response = stream_of(
                exchange, store_answer, on_end=lambda: convs.release(conv_id, held)
            )
            token = None  # the stream releases it when it ends or is closed
            return response
        answer = answer_of(exchange)
        store_answer(answer)
        return plain(answer)
    finally:
        if token is not None:
            convs.release(conv_id, token)


def _create(conv: Conversation) -> Response:
    return plain(conversation_store().create(conv).id)


# --- views -----------------------------------------------------------------------------------


def create() -> Response:
    """POST create: a transcript conversation (header ``settings``: empty or ``FriendChat``;
    body: the prompt, empty for the original's default). Answers the id.
    """
    settings_name = request.headers.get(SETTINGS_HEADER, "").strip()
    if settings_name not in CREATE_SETTINGS:
        raise BadRequest("unknown_settings", settings=settings_name[:64])
    preset = PRESETS[CREATE_SETTINGS[settings_name]]
    body = read_text()
    return _create(Conversation.start(preset, body if body.strip() else preset.default_prompt))


def create_turbo() -> Response:
    """POST createTurbo: a TURBO_MODEL chat. Body: the prompt as plain text, or a JSON object
    ``{"prompt": str, "stream": bool}`` (a body starting with ``{`` is read as JSON). Answers
    the id; with ``"stream": true`` its ``chat`` and ``regenerate`` answer as a stream.
    """
    preset = PRESETS["turbo"]
    body = read_text()
    stream = False
    if request.is_json or body.lstrip().startswith("{"):
        fields = specs.TURBO_CREATE.read(read_json_object())
        body = fields["prompt"] or ""
        stream = fields["stream"]
    prompt = body if body.strip() else preset.default_prompt
    return _create(Conversation.start(preset, prompt, stream=stream))


def create_gpt4() -> Response:
    """POST createGPT4: a GPT4_MODEL chat; body: the prompt (plain text). Answers the id."""
    preset = PRESETS["gpt4"]
    body = read_text()
    return _create(Conversation.start(preset, body if body.strip() else preset.default_prompt))


def create_role_play() -> Response:
    """POST createRolePlay: a transcript conversation between two named roles. Body: JSON
    ``{"human_name", "ai_name", "prompt"}``, all required and non-empty. Answers the id.
    """
    fields = specs.ROLE_PLAY_CREATE.read(read_json_object())
    conv = Conversation.start(
        PRESETS["roleplay"], fields["prompt"], human=fields["human_name"], ai=fields["ai_name"]
    )
    return _create(conv)


def chat() -> Response:
    """POST chat: the answer to the body's question (a stream for a streaming conversation)."""
    conv_id = conversation_id()
    question = read_text()
    if not question.strip():
        raise BadRequest("empty_question")
    return _turn(conv_id, question)


def regenerate() -> Response:
    """POST regenerate: a new answer to the last question, replacing the old one (as a stream
    for a streaming conversation, like ``chat``); 409 when there is no answer yet.
    """
    return _turn(conversation_id(), None)


def rollback() -> Response:
    """POST rollback: forget the last question and answer; 409 when there is none."""
    conv_id = conversation_id()
    convs = conversation_store()
    with convs.locked(conv_id):
        conv = convs.load(conv_id)
        if not conv.turns:
            raise ServiceError("conversation_empty")
        conv.turns.pop()
        convs.save(conv)
    return plain(ROLLED_BACK)


def context() -> Response:
    """POST context: the transcript: the prompt, a blank line, ``Human: ``/``AI: `` lines."""
    conv = _read()
    return plain(conv.context())


def context_array() -> Response:
    """POST contextArray: questions and answers alternating, as a JSON array of strings."""
    return jsonify(_read().sentences())


def finish() -> Response:
    """POST finish: delete the conversation (its shared copy stays)."""
    conv_id = conversation_id()
    convs = conversation_store()
    with convs.locked(conv_id):
        convs.load(conv_id)
        convs.delete(conv_id)
    return plain(FINISHED)


def store() -> Response:
    """POST store: keep the conversation for ``share/<id>`` (again: overwrite the copy)."""
    conv = _read()
    by_id = current_service().settings.share_by_conversation_id
    share_id = conversation_store().share(conv, by_conversation_id=by_id)
    response = plain(STORED)  # the original's body; the read-only share id goes in a header
    response.headers[SHARE_ID_HEADER] = share_id
    return response


@exempt
def share(share_id: str) -> Response:
    """GET share/<id>: the stored conversation, ``{"Id", "Prompt", "SentenceList"}``.

    Open to clients without credentials, as in the original (a shared link is for anyone). A
    share id (``X-Share-Id`` of ``store``) shows the copy without the conversation id; the
    original's form (the conversation id) works while SHARE_BY_CONVERSATION_ID is on.
    """
    by_id = current_service().settings.share_by_conversation_id
    return jsonify(conversation_store().shared(share_id, by_conversation_id=by_id))


def quick_answer() -> Response:
    """POST quickAnswer: a one-off answer. JSON ``question`` (required), ``prompt``,
    ``examples`` (questions and answers alternating), ``convType`` (``gpt3``: the default
    transcript preset; ``turbo`` or empty: TURBO_MODEL; ``gpt4``: GPT4_MODEL), ``stream``.
    """
    fields = specs.QUICK_ANSWER.read(read_json_object())
    preset = PRESETS[QUICK_TYPES[fields["convType"]]]
    prompt = fields["prompt"] or ""
    exchange = Exchange(
        preset,
        prompt if prompt.strip() else preset.default_prompt,
        preset.human,
        preset.ai,
        fields["examples"],
        fields["question"],
    )
    if fields["stream"]:
        return stream_of(exchange)
    return plain(answer_of(exchange))


def summary() -> Response:
    """POST summary: a summary of the body's text (COMPLETION_MODEL, the original's "Tl;dr")."""
    text = read_text()
    if not text.strip():
        raise BadRequest("empty_text")
    return plain(answer_of(Summary(text)))


def _read() -> Conversation:
    """The conversation named by the header, its idle timer restarted."""
    conv_id = conversation_id()
    convs = conversation_store()
    conv = convs.load(conv_id)
    convs.touch(conv_id)
    return conv
