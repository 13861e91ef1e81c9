"""The OpenAPI description of the client-key admin API, the usage report and the admin page
(:mod:`chatservice.routes.admin`, :mod:`chatservice.routes.admin_page`); merged into the
document by :func:`chatservice.openapi.build_document`.
"""

from __future__ import annotations

from typing import Any

from chatservice.clientkeys import MAX_AMOUNT, MAX_NAME, MAX_PATTERNS, MAX_TIME
from chatservice.settings import Settings

_COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_AMOUNT}


def schemas() -> dict[str, Any]:
    """``ClientKey``, ``ClientKeyList``, ``ClientKeySettings``, ``NewClientKey`` and
    ``UsageReport``.
    """
    settings_properties: dict[str, Any] = {
        "name": {
            "type": "string",
            "maxLength": MAX_NAME,
            "pattern": r"^[^\t\r\n]*\S[^\t\r\n]*$",
            "description": "Unique; no tabs or line breaks; spaces around it are dropped.",
        },
        "models": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PATTERNS,
            "items": {"type": "string", "pattern": r"\S"},
            "description": 'Model names or patterns with `*` and `?` (default `["*"]`).',
        },
        "rpm": {**_COUNT, "description": "Requests per minute; 0 or null: no limit."},
        "tpm": {**_COUNT, "description": "Tokens per minute; 0 or null: no limit."},
        "budget_tokens": {**_COUNT, "description": "Tokens in total; null: no budget."},
        "daily_budget_tokens": {**_COUNT, "description": "Tokens per UTC day."},
        "monthly_budget_tokens": {**_COUNT, "description": "Tokens per UTC month."},
        "expires_at": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_TIME,
            "description": "Unix seconds; null: never.",
        },
        "enabled": {"type": "boolean"},
    }
    key = {
        "type": "object",
        "required": ["id", "key", "name", "models", "enabled", "spent"],
        "properties": {
            "id": {"type": "string"},
            "key": {
                "type": "string",
                "description": "Masked (`csk-...abcd`), except in the creation answer.",
            },
            **settings_properties,
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
            "spent": {
                "type": "object",
                "description": "Tokens counted against the budgets (settled and reserved).",
                "properties": {n: {"type": "integer"} for n in ("total", "today", "this_month")},
            },
        },
    }
    row = {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "key_id": {"type": "string"},
            "key": {"type": "string", "description": "The key's name."},
            "model": {"type": "string"},
            **{
                n: {"type": "integer"}
                for n in (
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "errors",
                )
            },
            "cost": {"type": "number", "description": "In the currency of PRICES."},
        },
    }
    return {
        "ClientKey": key,
        "ClientKeyList": {
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/ClientKey"}}
            },
        },
        "ClientKeySettings": {"type": "object", "properties": settings_properties},
        "NewClientKey": {
            "type": "object",
            "required": ["name"],
            "properties": settings_properties,
        },
        "UsageReport": {
            "type": "object",
            "required": ["from", "to", "rows", "totals"],
            "properties": {
                "from": {"type": "string", "format": "date"},
                "to": {"type": "string", "format": "date"},
                "rows": {"type": "array", "items": row},
                "totals": {"type": "object"},
            },
        },
    }


def operations(settings: Settings) -> dict[str, dict[str, Any]]:
    """The paths under ``{ROUTE}/admin`` added for client keys, usage and the page."""
    from chatservice import openapi as doc

    base = f"{settings.route}/admin"
    admin = [{"adminToken": []}]
    error = doc._content(doc.JSON, doc._ref("ApiError"))

    def errors(*statuses: int) -> dict[str, Any]:
        text = {
            400: "A field or parameter is invalid (the key names it).",
            401: "No or a wrong ADMIN_TOKEN bearer.",
            404: "ADMIN_TOKEN is not set, or no key has this id or name.",
            409: "Another key has this name.",
            503: "The store (STORE_URL) is unavailable.",
        }
        return {str(s): {"description": text[s], "content": error} for s in statuses}

    def one(description: str, status: str = "200") -> dict[str, Any]:
        return {
            status: {
                "description": description,
                "content": doc._content(doc.JSON, doc._ref("ClientKey")),
            }
        }

    ref = [
        {
            "name": "ref",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The key's id or name.",
        }
    ]
    settings_body = doc._json_body(doc._ref("ClientKeySettings"))
    query = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": text,
        }
        for name, text in (
            ("key", "A key's id or name."),
            ("model", "A model name (exact)."),
            ("from", "First day, YYYY-MM-DD (UTC); default 29 days before `to`."),
            ("to", "Last day, YYYY-MM-DD (UTC); default today."),
            ("format", "`json` (default) or `csv`."),
        )
    ]
    query[2]["schema"] = query[3]["schema"] = {"type": "string", "format": "date"}
    query[4]["schema"] = {"enum": ["json", "csv"]}
    html = {"200": {"description": "HTML.", "content": doc._content(doc.HTML, {"type": "string"})}}
    return {
        f"{base}/client-keys": {
            "get": doc._op(
                doc.TAG_ADMIN,
                "client_keys_list",
                "List the client keys, masked",
                {
                    "200": {
                        "description": "Every key, oldest first.",
                        "content": doc._content(doc.JSON, doc._ref("ClientKeyList")),
                    },
                    **errors(401, 404, 503),
                },
                security=admin,
            ),
            "post": doc._op(
                doc.TAG_ADMIN,
                "client_keys_create",
                "Create a client key",
                {
                    **one("The new key, shown in full this once.", "201"),
                    **errors(400, 401, 404, 409, 503),
                },
                body=doc._json_body(doc._ref("NewClientKey")),
                security=admin,
                description="`name` is required; the store keeps the key's SHA-256.",
            ),
        },
        f"{base}/client-keys/{{ref}}": {
            "get": doc._op(
                doc.TAG_ADMIN,
                "client_keys_get",
                "One client key, masked",
                {**one("The key."), **errors(401, 404, 503)},
                parameters=ref,
                security=admin,
            ),
            "patch": doc._op(
                doc.TAG_ADMIN,
                "client_keys_update",
                "Change a client key (`enabled: false` disables it)",
                {**one("The key with its new settings."), **errors(400, 401, 404, 409, 503)},
                parameters=ref,
                body=settings_body,
                security=admin,
            ),
            "delete": doc._op(
                doc.TAG_ADMIN,
                "client_keys_delete",
                "Delete a client key",
                {"204": {"description": "Deleted; its usage rows stay."}, **errors(401, 404, 503)},
                parameters=ref,
                security=admin,
            ),
        },
        f"{base}/usage": {
            "get": doc._op(
                doc.TAG_ADMIN,
                "usage",
                "Usage per day, client key and model",
                {
                    "200": {
                        "description": "The rows, as JSON or CSV.",
                        "content": {
                            **doc._content(doc.JSON, doc._ref("UsageReport")),
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **errors(400, 401, 404, 503),
                },
                parameters=query,
                security=admin,
            ),
        },
        # Documents name each path once, without its trailing slash: the page is base + "/".
        base: {
            "get": doc._op(
                doc.TAG_DOCS,
                "admin_page",
                "The admin page: client keys and usage charts (asks for ADMIN_TOKEN)",
                {
                    **html,
                    "302": {
                        "description": "Without the trailing slash: redirect to the page.",
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                },
                description="Served at the path with a trailing slash.",
            ),
        },
    }
