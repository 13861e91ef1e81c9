"""Conversations of Alice ChatGPT: presets, the stored conversation, model requests.

A conversation is a prompt, a preset and its finished turns (question, answer), kept in the
store (STORE_URL) as JSON under ``conv:<id>`` and expiring CONVERSATION_TTL seconds after it
was last touched. ``store`` copies it, with no expiry, in the original's shape
``{"Id", "Prompt", "SentenceList"}`` to ``share:<share id>`` (a separate, read-only id whose
``Id`` is the share id) and, in the original's form, to ``share:<conversation id>`` -- which
reveals the conversation id to whoever has the link (SHARE_BY_CONVERSATION_ID turns it off).
One turn at a time runs per conversation: a turn holds ``lock:<id>`` (atomic set-if-absent in
the store, so across workers and machines) until it ends. The lock lives :data:`LOCK_TTL`
seconds and is renewed while the turn runs, so a worker killed mid-turn frees it soon.

Presets (the original's, mapped to today's models through the settings):

=============  ==========  ================  =====================================================
preset         style       model             sampling (``max_tokens``, then the rest)
=============  ==========  ================  =====================================================
default        transcript  COMPLETION_MODEL  256; temperature 0.9, top_p 1, frequency 0,
                                             presence 0.6 (the original's DefaultSettings)
FriendChat     transcript  COMPLETION_MODEL  256; temperature 0.5, top_p 1, frequency 0.5,
                                             presence 0 (the original's FriendSettings)
roleplay       transcript  COMPLETION_MODEL  256; temperature 0.5, top_p 1, frequency 0.5,
                                             presence 0 (the original's role-play settings)
turbo          chat        TURBO_MODEL       the model's own (the original sent none)
gpt4           chat        GPT4_MODEL        the model's own (the original sent none)
=============  ==========  ================  =====================================================

The original's 500/512 answer tokens are 256 here: long enough for a chat answer, and it leaves a
4k-context completion model room for the history. A transcript preset sends the prompt, a
blank line, ``Human: ...``/``AI: ...`` lines (or ``You``/``Friend``, or the role-play names)
and ``AI:``, with the stop sequences ``\\nHuman:`` and ``\\nAI:`` (the names' own), to
``/completions`` when COMPLETION_MODEL is a completion model; otherwise, and always on the
embedded model, it is a chat: the prompt as the system message, questions as ``user`` and
answers as ``assistant`` (the original swapped these two for turbo conversations), the stop
sequences kept. The embedded model gets at most 256 answer tokens when the preset sets none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import secrets
import string
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from chatservice.errors import BadRequest, NotFound, ServiceError
from chatservice.models import ChatRequest, is_completion_model
from chatservice.settings import Settings
from chatservice.state import KeyValueStore

log = logging.getLogger(__name__)

#: The original's default prompt of ``create`` (with the original's newline: shares show it).
DEFAULT_PROMPT = (
    "The following is a conversation with an AI assistant. The assistant is helpful, creative,"
    " clever, and very friendly.\n"
)
#: The original's default prompt of ``createTurbo`` and ``createGPT4``.
CHATGPT_PROMPT = (
    "You are ChatGPT, a large language model trained by OpenAI. Answer as concisely as possible."
)
#: The system message of ``summary`` when it is served as a chat.
SUMMARY_INSTRUCTION = (
    "Summarize the text the user sends in a few sentences, in the language it is written in."
)
#: Answer tokens of the embedded model when the preset sets none: unbounded, the small model
#: would write until its context window is full.
LOCAL_MAX_TOKENS = 256
#: Times a turn is retried with its oldest earlier turn left out when the model answers
#: ``context_length_exceeded``.
CONTEXT_RETRIES = 2

ID_ALPHABET = string.ascii_letters + string.digits
#: 22 characters of 62: about 131 random bits, so ids cannot be guessed.
ID_LENGTH = 22
_ID = re.compile(r"[A-Za-z0-9]{1,64}")
NAME_MAX = 64
SHARE_PREFIX = "sh_"


@dataclasses.dataclass(frozen=True)
class Preset:
    """How a kind of conversation talks to its model.

    :ivar name: ``default``, ``FriendChat``, ``roleplay``, ``turbo`` or ``gpt4``.
    :ivar transcript: a "Human:/AI:" transcript (completion API where available) or a chat.
    :ivar model_setting: the :class:`Settings` attribute naming the model.
    :ivar max_tokens: answer tokens sent; ``None`` leaves it to the model.
    :ivar params: sampling parameters sent, under OpenAI's names.
    :ivar human: the name of the user's lines in the transcript and in ``context``.
    :ivar ai: the name of the model's lines.
    :ivar default_prompt: the prompt when the client sends none.
    """

    name: str
    transcript: bool
    model_setting: str
    max_tokens: int | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    human: str = "Human"
    ai: str = "AI"
    default_prompt: str = ""


PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        transcript=True,
        model_setting="completion_model",
        max_tokens=256,
        params={"temperature": 0.9, "top_p": 1, "frequency_penalty": 0, "presence_penalty": 0.6},
        default_prompt=DEFAULT_PROMPT,
    ),
    "FriendChat": Preset(
        "FriendChat",
        transcript=True,
        model_setting="completion_model",
        max_tokens=256,
        params={"temperature": 0.5, "top_p": 1, "frequency_penalty": 0.5, "presence_penalty": 0},
        human="You",
        ai="Friend",
    ),
    "roleplay": Preset(
        "roleplay",
        transcript=True,
        model_setting="completion_model",
        max_tokens=256,
        params={"temperature": 0.5, "top_p": 1, "frequency_penalty": 0.5, "presence_penalty": 0},
    ),
    "turbo": Preset(
        "turbo", transcript=False, model_setting="turbo_model", default_prompt=CHATGPT_PROMPT
    ),
    "gpt4": Preset(
        "gpt4", transcript=False, model_setting="gpt4_model", default_prompt=CHATGPT_PROMPT
    ),
}
#: The ``settings`` header of ``create``: empty for the default preset, or ``FriendChat``.
CREATE_SETTINGS = {"": "default", "FriendChat": "FriendChat"}
#: ``convType`` of ``quickAnswer``: the original's ``gpt3`` and ``gpt4``; anything else was turbo.
QUICK_TYPES = {"": "turbo", "turbo": "turbo", "gpt3": "default", "gpt4": "gpt4"}

Turn = tuple[str, str]


def new_id() -> str:
    """A fresh conversation id: :data:`ID_LENGTH` characters of ``[A-Za-z0-9]`` from secrets."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def new_share_id() -> str:
    """A fresh share id: ``sh_`` and :data:`ID_LENGTH` random characters. The underscore
    keeps it out of :func:`is_valid_id`: a share id is never taken for a conversation id.
    """
    return SHARE_PREFIX + new_id()


def is_share_id(value: str) -> bool:
    """True when ``value`` has the form of a share id (:func:`new_share_id`)."""
    return value.startswith(SHARE_PREFIX) and is_valid_id(value.removeprefix(SHARE_PREFIX))


def is_valid_id(value: str) -> bool:
    """True when ``value`` could be a conversation id: 1..64 of ``[A-Za-z0-9]`` (the original's
    8-character ids and ours); anything else names no conversation.
    """
    return _ID.fullmatch(value) is not None


def check_name(body: Mapping[str, Any], field: str) -> str:
    """A role-play name from ``body[field]``: required, 1..64 characters, no line break or ``:``
    (either would break the transcript). Raises ``BadRequest``.
    """
    value = body.get(field)
    if value is None:
        raise BadRequest("missing_field", field=field)
    if not isinstance(value, str):
        raise BadRequest("not_a_string", field=field)
    name = value.strip()
    if not name:
        raise BadRequest("empty_field", field=field)
    if len(name) > NAME_MAX or any(c in name for c in "\r\n:"):
        raise BadRequest("invalid_name", field=field)
    return name


def trimmed(history: Sequence[Turn], max_messages: int) -> tuple[Turn, ...]:
    """The newest whole turns of ``history`` that fit in ``max_messages`` messages
    (MAX_CONTEXT_MESSAGES: each turn is a question and an answer).
    """
    pairs = max_messages // 2
    return tuple(history[len(history) - pairs :]) if pairs else ()


def transcript_lines(human: str, ai: str, turns: Sequence[Turn]) -> list[str]:
    """``Human: q`` and ``AI: a`` lines of ``turns``, in order."""
    lines = []
    for question, answer in turns:
        lines += [f"{human}: {question}", f"{ai}: {answer}"]
    return lines


def with_prompt(prompt: str, lines: list[str]) -> str:
    """The original's plain-text transcript: the prompt, a blank line, then ``lines``."""
    head = prompt.rstrip()
    body = "\n".join(lines)
    return f"{head}\n\n{body}" if head else body


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One question to a model, with what comes before it.

    :ivar preset: the conversation's :class:`Preset`.
    :ivar prompt: the prompt (a system message, or the transcript's head).
    :ivar human: the name of the user's lines (role-play: the client's ``human_name``).
    :ivar ai: the name of the model's lines.
    :ivar history: earlier turns sent, oldest first (already trimmed).
    :ivar question: the new question.
    """

    preset: Preset
    prompt: str
    human: str
    ai: str
    history: tuple[Turn, ...]
    question: str

    def without_oldest(self) -> Exchange:
        """The same exchange without its oldest earlier turn."""
        return dataclasses.replace(self, history=self.history[1:])

    def model(self, settings: Settings) -> str:
        """The model the preset asks for (its setting's value)."""
        return getattr(settings, self.preset.model_setting)

    def request(self, settings: Settings, *, stream: bool, embedded: bool) -> ChatRequest:
        """The model request: a transcript prompt for ``/completions`` when the preset is a
        transcript, its model is a completion model and the backend is not the ``embedded``
        model; a chat otherwise.
        """
        preset = self.preset
        model = self.model(settings)
        params = dict(preset.params)
        if preset.transcript:
            params["stop"] = [f"\n{self.human}:", f"\n{self.ai}:"]
        max_tokens = preset.max_tokens
        if embedded and max_tokens is None:
            max_tokens = LOCAL_MAX_TOKENS
        req = ChatRequest(
            kind="chat", model=model, max_tokens=max_tokens, params=params, stream=stream
        )
        if preset.transcript and not embedded and is_completion_model(model):
            req.kind = "completion"
            lines = transcript_lines(self.human, self.ai, self.history)
            req.prompt = with_prompt(self.prompt, [*lines, f"{self.human}: {self.question}"])
            req.prompt += f"\n{self.ai}:"
            return req
        system = self.prompt.strip()
        if preset.name == "roleplay":
            # As a chat the names are not in the lines any more: tell the model who is who.
            system = f"{system}\n\nYou are {self.ai}. The user is {self.human}.".strip()
        if system:
            req.messages.append({"role": "system", "content": system})
        for question, answer in self.history:
            req.messages.append({"role": "user", "content": question})
            req.messages.append({"role": "assistant", "content": answer})
        req.messages.append({"role": "user", "content": self.question})
        return req


@dataclasses.dataclass(frozen=True)
class Summary:
    """``summary``'s one-off request (the original's SummarySettings: temperature 0.7, top_p 1,
    presence 1; 512 answer tokens instead of 2048, which left a 4k model little room).
    """

    text: str

    def model(self, settings: Settings) -> str:
        """COMPLETION_MODEL."""
        return settings.completion_model

    def request(self, settings: Settings, *, stream: bool, embedded: bool) -> ChatRequest:
        """``<text>\\n\\nTl;dr:`` to COMPLETION_MODEL through ``/completions`` (the original's
        prompt), or a chat with :data:`SUMMARY_INSTRUCTION` on a chat model or the embedded one.
        """
        model = self.model(settings)
        params = {"temperature": 0.7, "top_p": 1, "presence_penalty": 1}
        req = ChatRequest(kind="chat", model=model, max_tokens=512, params=params, stream=stream)
        if not embedded and is_completion_model(model):
            req.kind, req.prompt = "completion", f"{self.text.rstrip()}\n\nTl;dr:"
        else:
            req.messages = [
                {"role": "system", "content": SUMMARY_INSTRUCTION},
                {"role": "user", "content": self.text},
            ]
        return req


@dataclasses.dataclass
class Conversation:
    """One conversation as stored.

    :ivar id: its id (:func:`new_id`).
    :ivar preset: the :data:`PRESETS` key.
    :ivar prompt: the prompt the client set (or the preset's default).
    :ivar human: the name of the user's lines (``Human``, ``You``, or the role-play name).
    :ivar ai: the name of the model's lines.
    :ivar stream: answer ``chat`` and ``regenerate`` as Server-Sent Events (createTurbo).
    :ivar turns: finished turns ``(question, answer)``, oldest first.
    """

    id: str
    preset: str
    prompt: str
    human: str
    ai: str
    stream: bool = False
    turns: list[Turn] = dataclasses.field(default_factory=list)

    @classmethod
    def start(
        cls, preset: Preset, prompt: str, *, human: str = "", ai: str = "", stream: bool = False
    ) -> Conversation:
        """A new, empty conversation (no id yet) of ``preset``."""
        return cls("", preset.name, prompt, human or preset.human, ai or preset.ai, stream)

    def sentences(self) -> list[str]:
        """The original's SentenceList: questions and answers alternating, oldest first."""
        return [text for turn in self.turns for text in turn]

    def context(self) -> str:
        """The original's ``context``: the prompt, a blank line, then ``Human: ``/``AI: `` lines."""
        return with_prompt(self.prompt, transcript_lines(self.human, self.ai, self.turns))

    def shared(self) -> dict[str, Any]:
        """The original's shared-conversation record ``{"Id", "Prompt", "SentenceList"}``."""
        return {"Id": self.id, "Prompt": self.prompt, "SentenceList": self.sentences()}

    def exchange(self, question: str, history: Sequence[Turn], max_messages: int) -> Exchange:
        """``question`` after ``history`` (trimmed to ``max_messages`` earlier messages)."""
        return Exchange(
            PRESETS[self.preset],
            self.prompt,
            self.human,
            self.ai,
            trimmed(history, max_messages),
            question,
        )

    def to_json(self) -> str:
        """The stored form."""
        data = dataclasses.asdict(self)
        data["v"] = 1
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Conversation:
        """Read the stored form; raises ``ValueError`` when it is not one."""
        data = json.loads(raw)
        turns = [(str(q), str(a)) for q, a in data["turns"]]
        if data["preset"] not in PRESETS:
            raise ValueError(f"unknown preset {data['preset']!r}")
        return cls(
            str(data["id"]),
            data["preset"],
            str(data["prompt"]),
            str(data["human"]),
            str(data["ai"]),
            bool(data.get("stream")),
            turns,
        )


#: Seconds a turn lock lives unless renewed; a running turn renews it every third of that,
#: so only a dead worker's lock lapses, within this time.
LOCK_TTL = 15.0


def renew_lock(store: KeyValueStore, key: str, token: str, ttl: float) -> threading.Event:
    """Keep the lock ``key`` held by ``token`` alive (every ``ttl / 3`` seconds, for another
    ``ttl``) until the returned event is set, the lock is released or it lapsed. Used by the
    conversations' and the chat room's turn locks alike.
    """
    stop = threading.Event()
    threading.Thread(target=_renew, args=(store, key, token, ttl, stop), daemon=True).start()
    return stop


def _renew(store: KeyValueStore, key: str, token: str, ttl: float, stop: threading.Event) -> None:
    # A background thread (a greenlet under gevent) for as long as the turn runs.
    while not stop.wait(ttl / 3):
        try:
            if not store.expire_if(key, token, ttl):
                return  # released, or lapsed: nothing to keep
        except ServiceError:
            log.warning("turn lock not renewed: store unavailable")


class ConversationStore:
    """Conversations, shared conversations and turn locks in a :class:`KeyValueStore`.

    :param store: the app's store (STORE_URL).
    :param ttl: idle seconds before a conversation expires (CONVERSATION_TTL).
    :param lock_ttl: seconds a turn lock lives unless renewed (:data:`LOCK_TTL`).
    :param max_bytes: most bytes of a stored conversation (CONVERSATION_MAX_BYTES); the
        oldest turns go first, the newest is always kept.

    Store failures raise ``ServiceError`` ``store_unavailable`` (503).
    """

    def __init__(
        self,
        store: KeyValueStore,
        ttl: float,
        lock_ttl: float = LOCK_TTL,
        max_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.lock_ttl = lock_ttl
        self.max_bytes = max_bytes
        self._renewers: dict[str, threading.Event] = {}

    def create(self, conv: Conversation) -> Conversation:
        """Store ``conv`` under a fresh id (set if absent: ids never collide) and return it."""
        while True:
            conv.id = new_id()
            if self.store.add(f"conv:{conv.id}", conv.to_json(), ttl=self.ttl):
                return conv

    def load(self, conv_id: str) -> Conversation:
        """The live conversation ``conv_id``; raises ``NotFound`` (conversation_not_found)."""
        raw = self.store.get(f"conv:{conv_id}") if is_valid_id(conv_id) else None
        if raw is None:
            raise NotFound("conversation_not_found")
        try:
            return Conversation.from_json(raw)
        except (ValueError, KeyError, TypeError):
            # Only this module writes the key; an unreadable value must not answer 500 forever.
            log.warning("unreadable stored conversation, treated as absent")
            raise NotFound("conversation_not_found") from None

    def save(self, conv: Conversation) -> None:
        """Store ``conv``, expiring CONVERSATION_TTL seconds from now, its oldest turns
        dropped while it is over ``max_bytes`` (a conversation must not grow without bound:
        60 turns of 1 MB made one 57 MB value that stalled the worker reading it).
        """
        raw = conv.to_json()
        if self.max_bytes is not None and len(raw.encode()) > self.max_bytes:
            sizes = [len(json.dumps(turn, ensure_ascii=False).encode()) + 2 for turn in conv.turns]
            excess, dropped = len(raw.encode()) - self.max_bytes, 0
            while excess > 0 and dropped < len(conv.turns) - 1:
                excess -= sizes[dropped]
                dropped += 1
            conv.turns = conv.turns[dropped:]
            raw = conv.to_json()
            log.info("conversation over CONVERSATION_MAX_BYTES: %d oldest turns dropped", dropped)
        self.store.set(f"conv:{conv.id}", raw, ttl=self.ttl)

    def delete(self, conv_id: str) -> None:
        """Forget the conversation (its shared copy stays)."""
        self.store.delete(f"conv:{conv_id}")

    def touch(self, conv_id: str) -> None:
        """Restart the idle timer of a conversation that was read.

        Only under the turn lock: rewriting the value while a turn runs could undo that turn.
        When a turn runs, it refreshes the timer itself when it saves.
        """
        token = self._try_lock(conv_id)
        if token is None:
            return
        try:
            raw = self.store.get(f"conv:{conv_id}")
            if raw is not None:
                self.store.set(f"conv:{conv_id}", raw, ttl=self.ttl)
        finally:
            self.release(conv_id, token)

    def share(self, conv: Conversation, by_conversation_id: bool = True) -> str:
        """Keep a copy of ``conv`` for sharing, with no expiry (again: overwrite it), and
        return its read-only share id (the same one each time for a conversation).

        The copy is kept under the share id, its ``Id`` being the share id; with
        ``by_conversation_id`` (SHARE_BY_CONVERSATION_ID) also under the conversation id, in
        the Alice ChatGPT API's own form, whose ``Id`` is the conversation id.
        """
        share_id = self.store.get(f"shareid:{conv.id}")
        if share_id is None:
            share_id = new_share_id()
            if not self.store.add(f"shareid:{conv.id}", share_id):
                share_id = self.store.get(f"shareid:{conv.id}") or share_id  # a racing store
        record = conv.shared()
        self.store.set(
            f"share:{share_id}", json.dumps({**record, "Id": share_id}, ensure_ascii=False)
        )
        if by_conversation_id:
            self.store.set(f"share:{conv.id}", json.dumps(record, ensure_ascii=False))
        return share_id

    def shared(self, share_id: str, by_conversation_id: bool = True) -> dict[str, Any]:
        """The shared record ``{"Id", "Prompt", "SentenceList"}`` of a share id, or (with
        ``by_conversation_id``) of a conversation id; raises ``NotFound``.
        """
        valid = is_share_id(share_id) or (by_conversation_id and is_valid_id(share_id))
        raw = self.store.get(f"share:{share_id}") if valid else None
        if raw is None:
            raise NotFound("shared_conversation_not_found")
        return json.loads(raw)

    def acquire(self, conv_id: str) -> str:
        """Take the turn lock of ``conv_id``; the token to :meth:`release` it with.

        Raises ``ServiceError`` ``conversation_busy`` (409) while another turn holds it.
        """
        token = self._try_lock(conv_id)
        if token is None:
            raise ServiceError("conversation_busy")
        self._renewers[token] = renew_lock(self.store, f"lock:{conv_id}", token, self.lock_ttl)
        return token

    def release(self, conv_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it (never someone else's)."""
        stop = self._renewers.pop(token, None)
        if stop is not None:
            stop.set()
        self.store.delete_if(f"lock:{conv_id}", token)

    @contextlib.contextmanager
    def locked(self, conv_id: str) -> Iterator[str]:
        """``with store.locked(id):`` holds the turn lock for the block (409 when busy)."""
        token = self.acquire(conv_id)
        try:
            yield token
        finally:
            self.release(conv_id, token)

    def _try_lock(self, conv_id: str) -> str | None:
        token = secrets.token_hex(8)
        return token if self.store.add(f"lock:{conv_id}", token, ttl=self.lock_ttl) else None


def iter_examples(value: Any) -> Iterator[Turn]:
    """``quickAnswer``'s ``examples`` as turns: a list of strings, questions and answers
    alternating (so an even number). Raises ``BadRequest`` (``invalid_examples``).
    """
    if value is None:
        return iter(())
    if (
        not isinstance(value, list)
        or len(value) % 2
        or not all(isinstance(item, str) for item in value)
    ):
        raise BadRequest("invalid_examples", field="examples")
    return iter(zip(value[::2], value[1::2], strict=True))
