"""chatservice: a self-hosted ChatGPT API speaking the request shapes of popular wrappers.

Importing the package stays light (no Flask, requests or ssl): gunicorn's master imports the
settings through ``config.py`` before its gevent workers monkey-patch the standard library,
and modules imported before the patch would keep unpatched sockets and ssl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from chatservice.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app; see :func:`chatservice.factory.create_app`."""
    from chatservice.factory import create_app as factory

    return factory(settings)
