"""HttpApi: the REST contract. Learns everything from the Store over NATS.

Every error is a JSON body `{"error": {"code", "message"}}`; bad input is a
4xx and never a 500; no response holds NaN or Infinity.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from cryptostats import subjects
from cryptostats.actors import ActorContext
from cryptostats.config import COIN_RE
from cryptostats.messages import dumps, loads

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

DEFAULT_WINDOW = 10
MIN_WINDOW = 2
MAX_WINDOW = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response; NaN and Infinity can never be written."""
    return web.Response(
        body=dumps(body), status=status, content_type="application/json"
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body every failure uses."""
    return json_response({"error": {"code": code, "message": message}}, status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure, ours or aiohttp's, into a JSON error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(
            exc.status, code, f"{exc.reason}: {request.method} {request.path}"
        )
    except Exception:
        log.exception("request_failed", path=request.path)
        return error_response(500, "internal_error", "internal error")


def single_param(request: web.Request, name: str) -> str | None:
    """The one value of query parameter `name`, or None when absent.

    Raises:
        ApiError: the parameter is repeated.
    """
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(
            400, "repeated_parameter", f"parameter {name!r} given {len(values)} times"
        )

    return values[0] if values else None


def parse_coin(request: web.Request) -> str:
    """The validated `coin` parameter.

    Raises:
        ApiError: missing, repeated or not a coin id.
    """
    coin = single_param(request, "coin")
    if coin is None or coin == "":
        raise ApiError(400, "missing_coin", "query parameter 'coin' is required")
    if not COIN_RE.fullmatch(coin):
        raise ApiError(
            400, "invalid_coin", "'coin' must be 1-64 characters of a-z, 0-9 and '-'"
        )

    return coin


def parse_window(request: web.Request) -> int:
    """The validated `window` parameter, DEFAULT_WINDOW when absent.

    Raises:
        ApiError: repeated, not an integer, or outside MIN..MAX_WINDOW.
    """
    text = single_param(request, "window")
    if text is None:
        return DEFAULT_WINDOW

    message = f"'window' must be an integer from {MIN_WINDOW} to {MAX_WINDOW}"
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise ApiError(400, "invalid_window", message)
    window = int(text)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ApiError(400, "invalid_window", message)

    return window


class HttpApi:
    """See the module docstring."""

    name = "http_api"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._settings = context.settings
        self._states = context.states
        self._tracked = frozenset(context.settings.coins.tracked)

    def app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[errors_as_json])
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/deviation", self.deviation)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            http = self._settings.http
            site = web.TCPSite(runner, http.host, http.port, reuse_address=True)
            await site.start()
            log.info("http_listening", url=f"http://{http.host}:{http.port}")
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    async def stats(self, request: web.Request) -> web.Response:
        """`GET /stats?coin=`: the latest price, market cap and 24 h change."""
        coin = parse_coin(request)
        quote = await self._latest(coin, prices=0)

        return json_response(
            {
                "coin": quote["coin"],
                "price": quote["price"],
                "marketCap": quote["marketCap"],
                "24hChange": quote["24hChange"],
                "observedAt": quote["observedAt"],
            }
        )

    async def deviation(self, request: web.Request) -> web.Response:
        """`GET /deviation?coin=&window=`: population std of recent prices."""
        coin = parse_coin(request)
        window = parse_window(request)
        quote = await self._latest(coin, prices=window)
        prices = quote["recentPrices"]

        return json_response(
            {
                "coin": quote["coin"],
                "deviation": statistics.pstdev(prices),
                "window": window,
                "count": len(prices),
            }
        )

    async def healthz(self, request: web.Request) -> web.Response:
        """`GET /healthz`: the process lives; each actor's state."""
        return json_response({"status": "ok", "actors": self._states()})

    async def _latest(self, coin: str, prices: int) -> dict[str, Any]:
        # A former id answers for the current one; "coin" in the answer
        # holds the current id.
        coin = self._settings.coins.canonical(coin)
        if coin not in self._tracked:
            raise ApiError(404, "coin_not_tracked", f"coin {coin!r} is not tracked")

        answer = await self._ask_store({"coin": coin, "prices": prices})
        if "error" in answer:
            raise ApiError(503, "store_unavailable", answer["error"].get("message", ""))
        if not answer.get("found"):
            raise ApiError(404, "no_data", f"no quote of {coin!r} stored yet")

        return dict(answer["quote"])

    async def _ask_store(self, query: dict[str, Any]) -> dict[str, Any]:
        timeout_s = self._settings.http.query_timeout_s
        try:
            reply = await self._nats.request(
                subjects.QUERY_LATEST, dumps(query), timeout=timeout_s
            )
        except NoRespondersError:
            raise ApiError(503, "store_unavailable", "no store is answering") from None
        except NatsTimeoutError:
            raise ApiError(
                503, "store_timeout", f"store did not answer within {timeout_s}s"
            ) from None

        try:
            answer = loads(reply.data)
        except (ValueError, json.JSONDecodeError):
            raise ApiError(503, "store_unavailable", "store answered garbage") from None
        return (
            answer if isinstance(answer, dict) else {"error": {"message": "bad answer"}}
        )
