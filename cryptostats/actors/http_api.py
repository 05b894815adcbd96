"""HttpApi: the REST contract. Learns everything from the Store over NATS.

Every error is a JSON body `{"error": {"code", "message"}}`; bad input is a
4xx and never a 500; no response holds NaN or Infinity. Validation, errors,
observability and the OpenAPI document live in `cryptostats.web`.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from cryptostats import metrics, subjects
from cryptostats.actors import ActorContext
from cryptostats.actors.read_cache import ReadCache, Versioned
from cryptostats.errors import ConfigError
from cryptostats.messages import dumps, from_iso, loads, to_iso
from cryptostats.web import docs
from cryptostats.web.caching import Validated, cache_control, not_modified
from cryptostats.web.errors import ApiError, json_response
from cryptostats.web.observe import Routes, protocol_logger
from cryptostats.web.openapi import openapi_document
from cryptostats.web.params import (
    parse_before,
    parse_coin,
    parse_limit,
    parse_window,
)

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

# aiohttp's own limit is 8190 bytes; a little more lets an over-long coin id
# reach our validation and get a JSON 400. Past this, aiohttp answers 400.
MAX_LINE_BYTES = 16 * 1024
MAX_FIELD_BYTES = 16 * 1024


def encoded_json_response(
    body: bytes, headers: dict[str, str] | None = None
) -> web.Response:
    """A response whose JSON body `dumps` already encoded (and kept)."""
    return web.Response(body=body, content_type="application/json", headers=headers)


class HttpApi:
    """See the module docstring."""

    name = "http_api"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._settings = context.settings
        self._states = context.states
        self._tracked = frozenset(context.settings.coins.tracked)
        self._cron = context.settings.schedule.cron
        self._openapi = dumps(openapi_document())
        self._reads = ReadCache(context.nats)

    def routes(self) -> Routes:
        """Every route of the API, each path with its handler."""
        routes = {
            "/stats": self.stats,
            "/deviation": self.deviation,
            "/history": self.history,
            "/coins": self.coins,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/openapi.json": self.openapi,
            **docs.routes(),
        }

        return Routes(routes, access_log=self._settings.http.access_log)

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        server = web.Server(
            self.routes(),
            access_log=None,
            logger=protocol_logger(),
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
        )
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        try:
            http = self._settings.http
            site = web.TCPSite(runner, http.host, http.port, reuse_address=True)
            async with self._reads.following():
                await _listen(site, http.host, http.port)
                log.info("http_listening", url=_listening_url(runner))
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    async def stats(self, request: web.BaseRequest) -> web.StreamResponse:
        """`GET /stats?coin=`: the latest price, market cap and 24 h change."""
        coin = self._canonical_tracked(parse_coin(request))
        # From memory without awaiting anything, when it can be.
        answer = self._reads.remembered(coin, "stats") or await self._reads.get(
            coin, "stats", lambda: self._stats_body(coin)
        )
        headers = {
            "Cache-Control": cache_control(self._cron, time.time()),
            "Last-Modified": answer.last_modified,
        }
        if not_modified(request, answer.modified_at):
            return web.Response(status=304, headers=headers)

        headers["Content-Type"] = "application/json"
        return web.Response(body=answer.body, headers=headers)

    async def _stats_body(self, coin: str) -> Versioned:
        quote = await self._latest(coin, prices=0)
        body = {
            "coin": quote["coin"],
            "price": quote["price"],
            "marketCap": quote["marketCap"],
            "24hChange": quote["24hChange"],
            "observedAt": quote["observedAt"],
        }
        observed_at = from_iso(quote["observedAt"])

        return quote["observedAt"], Validated.of(dumps(body), observed_at)

    async def deviation(self, request: web.BaseRequest) -> web.Response:
        """`GET /deviation?coin=&window=`: population std of recent prices."""
        coin = self._canonical_tracked(parse_coin(request))
        window = parse_window(request)
        key = ("deviation", window)
        body = self._reads.remembered(coin, key) or await self._reads.get(
            coin, key, lambda: self._deviation_body(coin, window)
        )

        return encoded_json_response(body)

    async def _deviation_body(self, coin: str, window: int) -> Versioned:
        quote = await self._latest(coin, prices=window)
        prices = quote["recentPrices"]

        return quote["observedAt"], dumps(
            {
                "coin": quote["coin"],
                "deviation": statistics.pstdev(prices),
                "window": window,
                "count": len(prices),
            }
        )

    async def history(self, request: web.BaseRequest) -> web.Response:
        """`GET /history?coin=&limit=&before=`: stored quotes, newest first."""
        coin, limit = parse_coin(request), parse_limit(request)
        before = parse_before(request)
        coin = self._canonical_tracked(coin)

        query = {"coin": coin, "limit": limit, "before": before and to_iso(before)}
        answer = self._answer_or_503(
            await self._ask_store(query, subjects.QUERY_HISTORY)
        )
        quotes = answer.get("quotes", [])
        # A Store from before `more` was added: a full page may not be the last.
        more = answer.get("more", len(quotes) == limit)

        return json_response(
            {
                "coin": coin,
                "quotes": quotes,
                "nextBefore": quotes[-1]["observedAt"] if more else None,
            }
        )

    async def coins(self, request: web.BaseRequest) -> web.Response:
        """`GET /coins`: tracked coins, their aliases, each latest observedAt."""
        tracked = list(self._settings.coins.tracked)
        answer = self._answer_or_503(
            await self._ask_store({"coins": tracked}, subjects.QUERY_COINS)
        )
        observed = answer.get("observedAt", {})

        return json_response(
            {
                "coins": [
                    {
                        "coin": coin,
                        "aliases": self._aliases_of(coin),
                        "observedAt": observed.get(coin),
                    }
                    for coin in tracked
                ]
            }
        )

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        """`GET /healthz`: the process lives; each actor's state."""
        return json_response({"status": "ok", "actors": self._states()})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        """`GET /readyz`: NATS connected, a Store answering, every actor ready."""
        states = self._states()
        checks = {
            "nats": "ok" if self._nats.is_connected else "not connected",
            "store": await self._store_check(),
            "actors": "ok"
            if all(state == "ready" for state in states.values())
            else "not all ready",
        }
        ready = all(value == "ok" for value in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "checks": checks,
            "actors": states,
        }

        return json_response(body, 200 if ready else 503)

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        """`GET /metrics`: this process's metrics in Prometheus text format."""
        body, content_type = metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type

        return response

    async def openapi(self, request: web.BaseRequest) -> web.Response:
        """`GET /openapi.json`: the OpenAPI 3.1 document of this API."""
        return web.Response(body=self._openapi, content_type="application/json")

    def _aliases_of(self, coin: str) -> list[str]:
        aliases = self._settings.coins.aliases
        return sorted(alias for alias, target in aliases.items() if target == coin)

    async def _store_check(self) -> str:
        try:
            answer = await self._ask_store({}, subjects.QUERY_PING)
        except ApiError as exc:
            return exc.message

        return "ok" if answer.get("ok") else "store cannot reach its database"

    def _canonical_tracked(self, coin: str) -> str:
        # A former id answers for the current one; answers name the current id.
        canonical = self._settings.coins.canonical(coin)
        if canonical not in self._tracked:
            raise ApiError(404, "coin_not_tracked", f"coin {coin!r} is not tracked")
        return canonical

    @staticmethod
    def _answer_or_503(answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            raise ApiError(503, "store_unavailable", answer["error"].get("message", ""))
        return answer

    async def _latest(self, coin: str, prices: int) -> dict[str, Any]:
        coin = self._canonical_tracked(coin)
        answer = self._answer_or_503(
            await self._ask_store({"coin": coin, "prices": prices})
        )
        if not answer.get("found"):
            raise ApiError(404, "no_data", f"no quote of {coin!r} stored yet")

        return dict(answer["quote"])

    async def _ask_store(
        self, query: dict[str, Any], subject: str = subjects.QUERY_LATEST
    ) -> dict[str, Any]:
        timeout_s = self._settings.http.query_timeout_s
        try:
            reply = await self._nats.request(subject, dumps(query), timeout=timeout_s)
        except NoRespondersError:
            raise ApiError(503, "store_unavailable", "no store is answering") from None
        except NatsTimeoutError:
            raise ApiError(
                503, "store_timeout", f"store did not answer within {timeout_s}s"
            ) from None
        except NatsError as exc:
            raise ApiError(
                503,
                "nats_unavailable",
                f"message bus unavailable: {type(exc).__name__}",
            ) from None

        try:
            answer = loads(reply.data)
        except (ValueError, json.JSONDecodeError):
            raise ApiError(503, "store_unavailable", "store answered garbage") from None
        return (
            answer if isinstance(answer, dict) else {"error": {"message": "bad answer"}}
        )


def _listening_url(runner: web.BaseRunner) -> str:
    """The URL actually listened on: port 0 picks a free port."""
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def _listen(site: web.TCPSite, host: str, port: int) -> None:
    """Start listening; a taken port or a bad address is a configuration
    error, which stops the process instead of a restart loop.

    Raises:
        ConfigError: the address cannot be listened on.
    """
    try:
        await site.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
