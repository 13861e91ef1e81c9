"""Which models clients may use (ALLOWED_MODELS) and which names are replaced (MODEL_ALIASES).

chatgpt-websocket checked the model against a list; the wrapper services default to
``text-davinci-003``, retired upstream, so aliases let old clients keep working. Both apply
on every face before any upstream call, to the embedded model's id too, and the
OpenAI-compatible ``/v1/models`` lists only allowed models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from chatservice.errors import BadRequest


class ModelPolicy:
    """The allow-list (``*`` wildcards, case-sensitive; empty allows any) and the aliases.

    Aliases are applied once (no chains) and should map between models of the same kind
    (chat to chat, completion to completion): the face already shaped the request for the
    name the client gave.
    """

    def __init__(self, allowed: Sequence[str], aliases: Mapping[str, str]) -> None:
        self._allowed = tuple(allowed)
        self._aliases = dict(aliases)

    def allows(self, model: str) -> bool:
        """Whether ``model`` matches ALLOWED_MODELS (always, when it is empty)."""
        return not self._allowed or any(fnmatchcase(model, pattern) for pattern in self._allowed)

    def resolve(self, model: str) -> str:
        """The model to call for the name a client gave: its alias, if it has one.

        Raises ``BadRequest`` (``model_not_allowed``, naming the client's model) when the
        model to call is not allowed.
        """
        target = self._aliases.get(model, model)
        if not self.allows(target):
            raise BadRequest("model_not_allowed", model=model)
        return target
