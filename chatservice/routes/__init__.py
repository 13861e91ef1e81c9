"""The HTTP faces, one module each: ``api`` (the Docker ChatGPT API platform), ``chat``
(chatgpt-service), ``ops``, ..."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint


def add_post_rule(blueprint: Blueprint, path: str, view: Callable[[], object]) -> None:
    """Route POST ``path`` and ``path + "/"`` to ``view``; ``""`` means the root ``/``.

    Both spellings answer directly: a redirect would make clients drop the POST body.
    """
    paths = [path, path + "/"] if path else ["/"]
    for index, rule in enumerate(paths):
        blueprint.add_url_rule(
            rule,
            endpoint=f"{view.__name__}_{index}",
            view_func=view,
            methods=["POST"],
            strict_slashes=False,
        )
