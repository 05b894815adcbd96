"""The OpenAPI 3.1 document of the REST API, built from the code's own bounds.

The examples in it are what the README shows (`python -m
cryptostats.web.readme`), and a test checks each one against its schema.
"""

from __future__ import annotations

from typing import Any

from cryptostats import __version__
from cryptostats.config import COIN_PATTERN
from cryptostats.web import params
from cryptostats.web.observe import REQUEST_ID_HEADER

JSON = "application/json"
Schema = dict[str, Any]

OBSERVED_AT = "2024-05-01T12:00:00.000Z"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable_number(description: str) -> Schema:
    return {"type": ["number", "null"], "description": description}


def _time(description: str, nullable: bool = False) -> Schema:
    kind: Any = ["string", "null"] if nullable else "string"
    return {"type": kind, "format": "date-time", "description": description}


def _object(properties: dict[str, Schema], **extra: Any) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "description": "stable, for programs"},
                    "message": {"type": "string", "description": "for people"},
                }
            )
        }
    ),
    "Stats": _object(
        {
            "coin": {"type": "string", "pattern": COIN_PATTERN},
            "price": {"type": "number", "exclusiveMinimum": 0},
            "marketCap": _nullable_number("null when the source does not know it"),
            "24hChange": _nullable_number("percent change over 24 hours"),
            "observedAt": _time("when the source says the quote was true"),
        }
    ),
    "Deviation": _object(
        {
            "coin": {"type": "string", "pattern": COIN_PATTERN},
            "deviation": {
                "type": "number",
                "minimum": 0,
                "description": "population standard deviation (divides by n)",
            },
            "window": {"type": "integer"},
            "count": {"type": "integer", "minimum": 1, "description": "prices used"},
        }
    ),
    "HistoryQuote": _object(
        {
            "price": {"type": "number", "exclusiveMinimum": 0},
            "marketCap": _nullable_number("null when the source did not know it"),
            "24hChange": _nullable_number("percent change over 24 hours"),
            "observedAt": _time("when the source says the quote was true"),
        }
    ),
    "History": _object(
        {
            "coin": {"type": "string", "pattern": COIN_PATTERN},
            "quotes": {"type": "array", "items": _ref("HistoryQuote")},
            "nextBefore": _time(
                "the `before` of the next (older) page; null on the last page",
                nullable=True,
            ),
        }
    ),
    "Coin": _object(
        {
            "coin": {"type": "string", "pattern": COIN_PATTERN},
            "aliases": {
                "type": "array",
                "items": {"type": "string"},
                "description": "other ids that answer for this coin",
            },
            "observedAt": _time("of its latest quote; null before the first", True),
        }
    ),
    "Coins": _object({"coins": {"type": "array", "items": _ref("Coin")}}),
    "Health": _object(
        {
            "status": {"const": "ok"},
            "actors": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "state of each actor this process runs",
            },
        }
    ),
    "Ready": _object(
        {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "`ok`, or what is wrong, per check",
            },
            "actors": {
                "type": "object",
                "additionalProperties": {"type": "string"},
            },
        }
    ),
}

HEADERS: dict[str, Schema] = {
    "RequestId": {
        "description": "the request's id, also in its access-log line; a "
        "well-formed id sent by the caller is kept",
        "schema": {"type": "string"},
    },
    "CacheControl": {
        "description": "public, max-age = seconds until the next tick",
        "schema": {"type": "string", "pattern": "^public, max-age=[0-9]+$"},
    },
    "LastModified": {
        "description": "the quote's observedAt as an HTTP date",
        "schema": {"type": "string"},
    },
}

COIN_PARAM: Schema = {
    "name": "coin",
    "in": "query",
    "required": True,
    "description": "a tracked CoinGecko coin id",
    "schema": {"type": "string", "pattern": COIN_PATTERN},
    "example": "bitcoin",
}


def _int_param(name: str, low: int, high: int, default: int, text: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": text,
        "schema": {
            "type": "integer",
            "minimum": low,
            "maximum": high,
            "default": default,
        },
    }


def _error(description: str, code: str, message: str) -> Schema:
    return {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {
            JSON: {
                "schema": _ref("Error"),
                "example": {"error": {"code": code, "message": message}},
            }
        },
    }


def _ok(schema: str, example: Any, **headers: Schema) -> Schema:
    return {
        "description": "OK",
        "headers": {
            REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"},
            **headers,
        },
        "content": {JSON: {"schema": _ref(schema), "example": example}},
    }


BAD_COIN = _error(
    "missing, malformed or repeated parameter",
    "invalid_coin",
    "'coin' must be 1-64 characters of a-z, 0-9 and '-'",
)
NO_COIN = _error(
    "the coin is not tracked, or has no quote yet",
    "coin_not_tracked",
    "coin 'dogecoin' is not tracked",
)
NO_STORE = _error(
    "no Store answered in time", "store_unavailable", "no store is answering"
)

STATS_EXAMPLE = {
    "coin": "bitcoin",
    "price": 64000.1,
    "marketCap": 1260000000000.0,
    "24hChange": 1.25,
    "observedAt": OBSERVED_AT,
}


def _stats() -> Schema:
    cached = {
        "Cache-Control": {"$ref": "#/components/headers/CacheControl"},
        "Last-Modified": {"$ref": "#/components/headers/LastModified"},
    }
    return {
        "summary": "The latest price, market cap and 24 h change of a coin",
        "operationId": "getStats",
        "parameters": [COIN_PARAM],
        "responses": {
            "200": _ok("Stats", STATS_EXAMPLE, **cached),
            "304": {
                "description": "not modified since `If-Modified-Since`",
                "headers": cached,
            },
            "400": BAD_COIN,
            "404": NO_COIN,
            "503": NO_STORE,
        },
    }


def _deviation() -> Schema:
    window = _int_param(
        "window",
        params.MIN_WINDOW,
        params.MAX_WINDOW,
        params.DEFAULT_WINDOW,
        "how many of the latest stored prices to use",
    )
    example = {
        "coin": "bitcoin",
        "deviation": 4082.4829046386,
        "window": 10,
        "count": 3,
    }
    return {
        "summary": "Population standard deviation of a coin's latest prices",
        "operationId": "getDeviation",
        "parameters": [COIN_PARAM, {**window, "example": 10}],
        "responses": {
            "200": _ok("Deviation", example),
            "400": BAD_COIN,
            "404": NO_COIN,
            "503": NO_STORE,
        },
    }


def _history() -> Schema:
    limit = _int_param(
        "limit",
        params.MIN_LIMIT,
        params.MAX_LIMIT,
        params.DEFAULT_LIMIT,
        "most quotes on one page",
    )
    before = {
        "name": "before",
        "in": "query",
        "required": False,
        "description": "only quotes observed strictly before this time (the "
        "cursor: pass the previous page's `nextBefore`); default: now",
        "schema": {"type": "string", "format": "date-time"},
        "example": "2024-05-01T12:30:00.000Z",
    }
    example = {
        "coin": "bitcoin",
        "quotes": [
            {
                "price": 64000.1,
                "marketCap": 1260000000000.0,
                "24hChange": 1.25,
                "observedAt": OBSERVED_AT,
            },
            {
                "price": 63890.5,
                "marketCap": None,
                "24hChange": None,
                "observedAt": "2024-05-01T11:45:00.000Z",
            },
        ],
        "nextBefore": "2024-05-01T11:45:00.000Z",
    }
    return {
        "summary": "Stored quotes of a coin, newest first, paged by time",
        "description": "Each page costs the same however long the history is.",
        "operationId": "getHistory",
        "parameters": [COIN_PARAM, {**limit, "example": 2}, before],
        "responses": {
            "200": _ok("History", example),
            "400": BAD_COIN,
            "404": NO_COIN,
            "503": NO_STORE,
        },
    }


def _coins() -> Schema:
    example = {
        "coins": [
            {"coin": "bitcoin", "aliases": [], "observedAt": OBSERVED_AT},
            {"coin": "ethereum", "aliases": [], "observedAt": None},
        ]
    }
    return {
        "summary": "The tracked coins, their aliases and latest observed time",
        "operationId": "getCoins",
        "responses": {"200": _ok("Coins", example), "503": NO_STORE},
    }


def _healthz() -> Schema:
    example = {"status": "ok", "actors": {"store": "ready", "http_api": "ready"}}
    return {
        "summary": "Liveness: the process answers",
        "operationId": "getHealthz",
        "responses": {"200": _ok("Health", example)},
    }


def _readyz() -> Schema:
    example = {
        "status": "ready",
        "checks": {"nats": "ok", "store": "ok", "actors": "ok"},
        "actors": {"store": "ready", "http_api": "ready"},
    }
    not_ready = {
        "status": "not_ready",
        "checks": {"nats": "ok", "store": "no store is answering", "actors": "ok"},
        "actors": {"http_api": "ready"},
    }
    failing = _ok("Ready", not_ready)
    return {
        "summary": "Readiness: NATS connected, a Store answering, actors ready",
        "operationId": "getReadyz",
        "responses": {
            "200": _ok("Ready", example),
            "503": {**failing, "description": "not ready"},
        },
    }


def _text(description: str, media: str, example: str) -> Schema:
    return {
        "description": description,
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {media: {"schema": {"type": "string"}, "example": example}},
    }


def _metrics() -> Schema:
    example = (
        "# HELP cryptostats_ticks_total Ticks published by the Ticker.\n"
        "# TYPE cryptostats_ticks_total counter\n"
        "cryptostats_ticks_total 42.0\n"
    )
    return {
        "summary": "Prometheus metrics of this process",
        "operationId": "getMetrics",
        "responses": {"200": _text("Prometheus text format", "text/plain", example)},
    }


def _openapi() -> Schema:
    return {
        "summary": "This document",
        "operationId": "getOpenapi",
        "responses": {
            "200": {
                "description": "OpenAPI 3.1",
                "content": {JSON: {"schema": {"type": "object"}}},
            }
        },
    }


def _docs() -> Schema:
    example = '<!doctype html>\n<html lang="en">...'
    return {
        "summary": "This document as a page for people, served with its assets",
        "operationId": "getDocs",
        "responses": {"200": _text("HTML page", "text/html", example)},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at `/openapi.json`."""
    paths = {
        "/stats": _stats(),
        "/deviation": _deviation(),
        "/history": _history(),
        "/coins": _coins(),
        "/healthz": _healthz(),
        "/readyz": _readyz(),
        "/metrics": _metrics(),
        "/openapi.json": _openapi(),
        "/docs": _docs(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cryptostats",
            "version": __version__,
            "description": "Live cryptocurrency market stats. Every error is "
            '`{"error": {"code", "message"}}`: 400 for bad input, 404 for an '
            "unknown coin or route, 405 for a wrong method, 503 when no Store "
            "answers in time.",
        },
        "paths": {path: {"get": operation} for path, operation in paths.items()},
        "components": {"schemas": SCHEMAS, "headers": HEADERS},
    }
