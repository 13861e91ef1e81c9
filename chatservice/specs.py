"""Declarative request specs of the JSON faces: one field table per face drives both reading a
body (:meth:`BodyField.value`) and the body's JSON Schema in the OpenAPI document
(:meth:`Spec.schema`).

A face reads each field with ``spec[name].value(body)`` in the order its checks need, or all
of them in the table's order with :meth:`Spec.read`. A :class:`BodyField` names a field, its
kind (``string``, ``choice``, ``boolean``, ``integer``, ``positive_integer``, ``number``,
``messages``, ``stop``, ``object``, or ``custom``: a reader with its JSON Schema beside it),
its other spellings, whether it is required, its range and default, and its description. The
rules are :mod:`chatservice.validation`'s, which does the reading: the first present, non-null
spelling wins; null means absent; an error is a :class:`~chatservice.errors.BadRequest` whose
key is stable and localized and whose parameters name the field. Rules that span fields (the
chat face's "``query`` or ``messages``") stay with the face, which adds their schema with
``extra``.

The Docker ChatGPT API platform's ``POST /{ROUTE}`` (:data:`API`), chatgpt-service's
``POST /{ROUTE}/v1/chat`` (:data:`CHAT`), ChatGPT-API on gin's chat-room turn
(:data:`ROOM_TURN`) and Alice ChatGPT's JSON bodies (:data:`TURBO_CREATE`,
:data:`ROLE_PLAY_CREATE`, :data:`QUICK_ANSWER`) are described here, OpenAI's bodies next to
their checks in :mod:`chatservice.openai_fields`. The conversations' plain-text bodies and the
WebSocket frames are read and documented by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from chatservice import conversations, validation
from chatservice.errors import BadRequest

Schema = dict[str, Any]
#: A ``custom`` field's reader: ``(body, name) -> value``, raising ``BadRequest``.
Reader = Callable[[dict[str, Any], str], Any]

#: The JSON Schema of one conversation turn (``components/schemas/Message``).
MESSAGE_REF: Schema = {"$ref": "#/components/schemas/Message"}
#: The characters ``str.strip()`` removes (``str.isspace``), spelled out: ``\s`` means another
#: set in ECMA-262 regexes (JSON Schema's), in Python's ``re`` and in generators of test data.
SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: :meth:`BodyField.absent_value` of a field whose absence must be read like its presence.
READ = object()
#: Strings that ``.strip()`` leaves non-empty (``validation.string(non_empty=True)``).
NON_BLANK = f"[^{SPACE}]"


@dataclasses.dataclass(frozen=True)
class BodyField:
    """One field of a JSON body (see the module docstring).

    ``minimum``/``maximum`` bound integers and numbers; ``max_items`` bounds ``stop`` lists;
    ``default`` is the value of an absent field; ``choices`` are a ``choice`` string's values
    (another string is a ``choice_error``); a ``custom`` field is read by ``reader`` and
    documented by ``json_schema``; ``alias_description`` documents the other spellings;
    ``extra`` adds JSON Schema keywords (``pattern``, ``writeOnly``, ``examples``); ``read``
    false: documented here, read elsewhere (``lang``). A ``custom`` reader reads other fields
    only when its own is present: :meth:`Spec.read` takes its value for an absent field from
    an empty body, once.
    """

    name: str
    kind: str
    aliases: tuple[str, ...] = ()
    required: bool = False
    non_empty: bool = False
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None
    max_items: int = 4
    description: str = ""
    alias_description: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    read: bool = True
    choices: tuple[str, ...] = ()
    choice_error: str = "invalid_choice"
    reader: Reader | None = None
    json_schema: Mapping[str, Any] | None = None

    def value(self, body: dict[str, Any]) -> Any:
        """The field's value in ``body`` (``None`` or ``default`` when absent).

        Raises :class:`~chatservice.errors.BadRequest` naming the field.
        """
        names = (self.name, *self.aliases)
        if self.kind in ("string", "choice"):
            value = validation.string(
                body, *names, required=self.required, non_empty=self.non_empty
            )
            if value is None:
                return self.default
            if self.kind == "choice" and value not in self.choices:
                raise BadRequest(self.choice_error, field=self.name)
            return value
        if self.kind == "boolean":
            return validation.boolean(body, self.name, self.default)
        if self.kind == "integer":
            return validation.integer(
                body, self.name, int(self.minimum), int(self.maximum), default=self.default
            )
        if self.kind == "positive_integer":
            return validation.positive_integer(body, self.name)
        if self.kind == "number":
            return validation.number(body, self.name, self.minimum, self.maximum)
        if self.kind == "object":
            return validation.json_object(body, self.name)
        if self.kind == "custom" and self.reader is not None:
            return self.reader(body, self.name)
        if self.kind == "messages":
            return validation.messages(body, *names)
        if self.kind == "stop":
            return validation.stop_sequences(body, self.name, self.max_items)
        raise ValueError(f"unknown field kind {self.kind!r}")

    def absent_value(self) -> Any:
        """What :meth:`value` returns when the field is absent or null, or :data:`READ` when
        that takes reading it (a required field raises, a ``custom`` reader decides, another
        spelling may be present)."""
        if self.required or self.aliases:
            return READ
        if self.kind == "custom" and self.reader is not None:
            # A reader looks at other fields only when its own is present (checked by the
            # tests against reading every field), so an empty body shows its absent value.
            try:
                value = self.reader({}, self.name)
            except BadRequest:
                return READ
            # Shared by every request from now on: only a value nobody can change in place.
            return value if value is None or isinstance(value, str | int | float) else READ
        if self.kind in ("string", "choice", "boolean", "integer"):
            return self.default
        return None

    def type_schema(self) -> Schema:
        """The JSON Schema of the value alone (no description or default)."""
        schema: Schema
        if self.kind == "string":
            schema = {"type": "string" if self.required else ["string", "null"]}
            if self.non_empty:
                schema["pattern"] = NON_BLANK
        elif self.kind == "choice":
            schema = {"enum": [*self.choices] if self.required else [*self.choices, None]}
        elif self.kind in ("boolean", "integer", "number"):
            schema = {"type": [self.kind, "null"]}
            if self.minimum is not None:
                schema.update(minimum=self.minimum, maximum=self.maximum)
        elif self.kind == "messages":
            schema = {"type": ["array", "null"], "items": MESSAGE_REF}
        elif self.kind == "stop":
            schema = {
                "type": ["string", "array", "null"],
                "items": {"type": "string"},
                "maxItems": self.max_items,
            }
        elif self.kind == "positive_integer":
            schema = {"type": ["integer", "null"], "minimum": 1}
        elif self.kind == "object":
            schema = {"type": ["object", "null"]}
        else:
            schema = dict(self.json_schema or {})
        return schema

    def schema(self) -> Schema:
        """The field's property schema in the OpenAPI document."""
        schema = self.type_schema() if self.read else {}
        if self.default is not None:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        schema.update(self.extra)
        return schema


@dataclasses.dataclass(frozen=True)
class Spec:
    """A face's body: its fields, and JSON Schema keywords for rules that span fields."""

    fields: tuple[BodyField, ...]
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Each read field with its :meth:`BodyField.absent_value`, worked out once.
    _reading: tuple[tuple[BodyField, Any], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        reading = tuple((field, field.absent_value()) for field in self.fields if field.read)
        object.__setattr__(self, "_reading", reading)  # frozen: set once, here

    def __getitem__(self, name: str) -> BodyField:
        """The field called ``name`` (a face reads its fields in the order its checks need)."""
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(name)

    def read(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every read field's value (``None`` or its default when absent), checked in the
        table's order, by name. Raises :class:`~chatservice.errors.BadRequest` naming the
        first bad field."""
        values = {}
        for field, absent in self._reading:
            # Most of a body's optional fields are absent (OpenAI's chat body has twenty):
            # their value is known without the reader's calls.
            if absent is not READ and body.get(field.name) is None:
                values[field.name] = absent
            else:
                values[field.name] = field.value(body)
        return values

    def schema(self, description: str | None = None) -> Schema:
        """The body's JSON Schema: ``required``, each spelling's property, and an ``if/else``
        per other spelling, which is checked only when the earlier ones are absent or null.
        ``description`` (if given) describes the body."""
        schema: Schema = {"type": "object", **self.extra}
        if description is not None:
            schema["description"] = description
        required = [field.name for field in self.fields if field.required]
        if required:
            schema["required"] = required
        aliases = [
            _alias(earlier, alias, field.type_schema())
            for field in self.fields
            for earlier, alias in zip((field.name, *field.aliases), field.aliases, strict=False)
        ]
        if aliases:
            schema["allOf"] = aliases
        properties: Schema = {}
        for field in self.fields:
            properties[field.name] = field.schema()
            for alias in field.aliases:
                properties[alias] = {"description": field.alias_description}
        schema["properties"] = properties
        return schema


def _alias(first: str, second: str, schema: Schema) -> Schema:
    """``second`` must match ``schema`` unless ``first`` is present and not null."""
    return {
        "if": {"required": [first], "properties": {first: {"not": {"type": "null"}}}},
        "else": {"properties": {second: schema}},
    }


#: The request's model, on every JSON face.
MODEL = BodyField(
    "model",
    "string",
    non_empty=True,
    description="The model; default DEFAULT_MODEL. Completion models (`text-davinci-003`, "
    "`*instruct*`, `davinci*`...) are asked through `/completions` with a transcript prompt. "
    "MODEL_ALIASES renames it; a model ALLOWED_MODELS excludes is a 400 "
    "`model_not_allowed`. LOCAL_MODEL_ID names the embedded model.",
    extra={"examples": ["gpt-3.5-turbo"]},
)
#: The language of error messages (read by :func:`chatservice.web.request_language`).
LANG = BodyField(
    "lang",
    "any",
    read=False,
    description="Language of error messages: `en`, `zh_CN`, `zh_TW` or `ru` (also "
    "`zh-CN`, `zh-Hans`...). Takes precedence over `Accept-Language`; values that name no "
    "known language, and non-strings, are ignored.",
    extra={"examples": ["zh_CN"]},
)
STREAM = BodyField("stream", "boolean", default=False)

#: ``POST /{ROUTE}`` of the Docker ChatGPT API platform.
API = Spec(
    (
        BodyField(
            "user_content",
            "string",
            required=True,
            non_empty=True,
            description="The question; not blank.",
        ),
        BodyField(
            "system_content",
            "string",
            aliases=("sys_content",),
            description="System prompt; replaces a leading system turn of the history.",
            alias_description="Same as `system_content` (the platform's README's spelling): a "
            "string or null, used (and checked) only when `system_content` is absent or null.",
        ),
        BodyField(
            "continuous_dialogue",
            "messages",
            aliases=("continuous",),
            description="Earlier turns (the `result` of the previous answer).",
            alias_description="Same as `continuous_dialogue`: a list of `Message` or null, "
            "used (and checked) only when `continuous_dialogue` is absent or null.",
        ),
        MODEL,
        BodyField(
            "api_key",
            "string",
            description="An upstream API key for this request only (printable ASCII: it "
            "travels in a header); never stored or logged.",
            extra={"pattern": "^[ -~]*$", "writeOnly": True},
        ),
        BodyField("max_tokens", "integer", minimum=1, maximum=4096, default=100),
        STREAM,
        LANG,
    )
)

#: ``POST /{ROUTE}/v1/chat`` of chatgpt-service.
CHAT = Spec(
    (
        BodyField("query", "string", description="The question (appended after `messages`)."),
        BodyField("messages", "messages"),
        MODEL,
        BodyField(
            "openai_parameter",
            "boolean",
            default=True,
            description="true: only the model, the input and `max_tokens` are sent, so the "
            "upstream's own sampling defaults apply. false: every parameter is sent, with the "
            "original's defaults for the absent ones (temperature 0, top_p 1, penalties 0, "
            '`stop: ["Human:"]` for completion models).',
        ),
        BodyField("temperature", "number", minimum=0, maximum=2),
        BodyField("top_p", "number", minimum=0, maximum=1),
        BodyField("max_tokens", "integer", minimum=1, maximum=4096, default=500),
        BodyField("frequency_penalty", "number", minimum=-2, maximum=2),
        BodyField("presence_penalty", "number", minimum=-2, maximum=2),
        BodyField(
            "best_of",
            "integer",
            minimum=1,
            maximum=20,
            description="Sent to completion models only.",
        ),
        BodyField("stop", "stop", description="A stop sequence or up to 4."),
        STREAM,
        LANG,
    ),
    extra={
        "description": "`query` and/or a non-empty `messages`: at least one.",
        "anyOf": [
            {"required": ["query"], "properties": {"query": {"type": "string"}}},
            {
                "required": ["messages"],
                "properties": {"messages": {"type": "array", "minItems": 1}},
            },
        ],
    },
)

#: ``POST /{ROUTE}/chat-room`` (and ``/stream``) of ChatGPT-API on gin: one turn.
ROOM_TURN = Spec(
    (
        BodyField(
            "role",
            "choice",
            non_empty=True,
            choices=validation.ROLES,
            choice_error="invalid_turn_role",
            default="user",
        ),
        BodyField(
            "content",
            "string",
            required=True,
            non_empty=True,
            description="The message; not blank.",
        ),
        BodyField(
            "name",
            "string",
            non_empty=True,
            description="The speaker's name, forwarded to the model; not blank.",
        ),
    )
)


def _role_name_schema() -> Schema:
    """``conversations.check_name``'s rule: 1..NAME_MAX characters once trimmed, no line
    break or ``:``."""
    inner = conversations.NAME_MAX - 2
    return {
        "type": "string",
        "description": f"1 to {conversations.NAME_MAX} characters once trimmed, without line "
        "breaks or `:`.",
        "pattern": f"^[{SPACE}]*[^{SPACE}:](?:[^\\r\\n:]{{0,{inner}}}[^{SPACE}:])?[{SPACE}]*$",
    }


#: A role-play name (``components/schemas/RoleName``).
ROLE_NAME: Schema = _role_name_schema()
ROLE_NAME_REF: Schema = {"$ref": "#/components/schemas/RoleName"}

#: Alice ChatGPT's ``POST /{ROUTE}/chatgpt/createTurbo`` when the body is JSON.
TURBO_CREATE = Spec(
    (
        BodyField("prompt", "string", description="The system prompt."),
        BodyField(
            "stream",
            "boolean",
            default=False,
            description="Answer `chat` and `regenerate` as Server-Sent Events.",
        ),
    )
)

#: Alice ChatGPT's ``POST /{ROUTE}/chatgpt/createRolePlay``.
ROLE_PLAY_CREATE = Spec(
    (
        BodyField(
            "human_name",
            "custom",
            required=True,
            reader=conversations.check_name,
            json_schema=ROLE_NAME_REF,
        ),
        BodyField(
            "ai_name",
            "custom",
            required=True,
            reader=conversations.check_name,
            json_schema=ROLE_NAME_REF,
        ),
        BodyField(
            "prompt", "string", required=True, non_empty=True, description="The scene; not blank."
        ),
    )
)


def _examples(body: dict[str, Any], name: str) -> tuple[conversations.Turn, ...]:
    return tuple(conversations.iter_examples(body.get(name)))


#: Alice ChatGPT's ``POST /{ROUTE}/chatgpt/quickAnswer``.
QUICK_ANSWER = Spec(
    (
        BodyField("question", "string", required=True, non_empty=True, description="Not blank."),
        BodyField(
            "convType",
            "choice",
            choices=tuple(conversations.QUICK_TYPES),
            choice_error="invalid_conv_type",
            default="",
            description="`gpt3`: the transcript preset (COMPLETION_MODEL); `turbo` or empty: "
            "TURBO_MODEL; `gpt4`: GPT4_MODEL.",
        ),
        BodyField("prompt", "string"),
        BodyField(
            "examples",
            "custom",
            reader=_examples,
            json_schema={"type": ["array", "null"], "items": {"type": "string"}},
            description="Questions and answers alternating: an even number.",
        ),
        STREAM,
    )
)
