"""The `cryptostats` command: settings, embedded servers, NATS, supervisor.

`python -m cryptostats` runs all five actors; `--actors` runs any subset,
so the same program can be split across processes and machines.
`python -m cryptostats import ...` fills stored history instead.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import nats
import structlog
from anyio.abc import TaskGroup
from nats.aio.client import Client as NatsClient
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

from cryptostats import embedded, metrics
from cryptostats.actors import ActorContext
from cryptostats.actors.fetcher import Fetcher
from cryptostats.actors.http_api import HttpApi
from cryptostats.actors.publisher import Publisher
from cryptostats.actors.store import Store
from cryptostats.actors.ticker import Ticker
from cryptostats.config import ACTOR_NAMES, Settings, load_settings, nats_servers
from cryptostats.errors import (
    ConfigError,
    CryptostatsError,
    DataDirInUseError,
    ImportFailedError,
    NatsUnreachableError,
)
from cryptostats.history_import import ImportPlan, ImportReport
from cryptostats.logs import configure_logging
from cryptostats.supervisor import Actor, Supervisor

log = structlog.get_logger("cryptostats.main")

ACTOR_TYPES = {
    "ticker": Ticker,
    "fetcher": Fetcher,
    "publisher": Publisher,
    "store": Store,
    "http_api": HttpApi,
}
NEEDS_MONGO = {"store"}
NATS_CONNECT_WAIT_S = 30.0
EXIT_CONFIG = 2
EXIT_CRASHED = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line flags; see `--help`."""
    parser = argparse.ArgumentParser(
        prog="cryptostats", description="Live cryptocurrency market stats over NATS."
    )
    parser.add_argument(
        "--config", type=Path, help="TOML file (default: ./config.toml if present)"
    )
    parser.add_argument(
        "--actors", help=f"comma-separated subset of {','.join(ACTOR_NAMES)}"
    )
    parser.add_argument("--host", help="HTTP listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP listen port (default 3000)")
    parser.add_argument("--data-dir", help="embedded servers' data (default ./data)")
    parser.add_argument(
        "--schedule",
        help="cron expression; 6 fields put seconds first ('*/5 * * * * *')",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_import_command(commands)
    return parser.parse_args(argv)


def _add_import_command(commands: Any) -> None:
    command = commands.add_parser(
        "import",
        help="fill stored history from CoinGecko or a CSV export, then exit",
        description="Store past quotes through the Publisher and the Store. "
        "Running it twice stores nothing new. It runs beside a service on "
        "the same data dir, through that service's embedded servers.",
    )
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", type=Path, help="a CoinGecko CSV export of one coin (needs --coin)"
    )
    source.add_argument(
        "--market-chart",
        action="store_true",
        help="fetch /coins/{id}/market_chart for each coin",
    )
    command.add_argument(
        "--coin",
        action="append",
        help="coin id; repeatable (default for --market-chart: configured coins)",
    )
    command.add_argument(
        "--days", type=int, default=30, help="market chart days (default 30)"
    )
    command.add_argument("--no-progress", action="store_true", help="no progress bars")


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Settings given by flags, in the shape of the config file."""
    overrides: dict[str, dict[str, Any]] = {}
    pairs = [
        (
            "service",
            "actors",
            args.actors and [a.strip() for a in args.actors.split(",")],
        ),
        ("service", "data_dir", args.data_dir),
        ("http", "host", args.host),
        ("http", "port", args.port),
        ("schedule", "cron", args.schedule),
    ]
    for section, key, value in pairs:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    return overrides


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file to read: the flag's, else ./config.toml if it exists."""
    if args.config is not None:
        return Path(args.config)
    default = Path("config.toml")
    return default if default.is_file() else None


def main(argv: Sequence[str] | None = None) -> None:
    """Run the service until SIGINT/SIGTERM; exit non-zero on failure."""
    started = time.monotonic()
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(config_path(args), overrides=flag_overrides(args))
    except CryptostatsError as exc:
        log.error("config_invalid", error=str(exc))
        sys.exit(EXIT_CONFIG)

    if args.command == "import":
        sys.exit(anyio.run(run_import_command, settings, args))
    sys.exit(anyio.run(run_service, settings, started))


async def run_service(settings: Settings, started: float) -> int:
    """Start what `settings` asks for, run it until a signal, stop it all.

    Returns:
        The process exit code: 0 after a clean stop, EXIT_CONFIG when the
        configuration is unusable (a rejected API key, a data dir in use).
    """
    try:
        async with AsyncExitStack() as stack:
            settings = await start_embedded_servers(settings, stack)
            client = await connect_nats(settings.nats.url, settings.nats.connect_wait_s)
            stack.push_async_callback(_drain, client)
            return await supervise(settings, client, started)
    except (CryptostatsError, ExceptionGroup) as exc:
        return _failed("service_failed", exc)


async def run_import_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run `import` as the command line asked.

    Returns:
        The process exit code: 0 once every quote is stored, EXIT_CONFIG
        for a command line or data dir that cannot be used.
    """
    try:
        plan = ImportPlan.from_args(args, settings)
    except ImportFailedError as exc:
        log.error("import_invalid", error=str(exc))
        return EXIT_CONFIG

    try:
        report = await run_import(settings, plan)
    except (CryptostatsError, ExceptionGroup) as exc:
        return _failed("import_failed", exc)

    log.info("history_imported", **vars(report))
    return 0


async def run_import(settings: Settings, plan: ImportPlan) -> ImportReport:
    """Start the servers, a Publisher and a Store, and import `plan`.

    Returns:
        What was read, published, and already held.

    With embedded servers, a service running on the same data dir lends
    them: the import then runs beside it.

    Raises:
        ImportFailedError: a source could not be read or handed on.
        EmbeddedServerError: an embedded server did not start.
        DataDirInUseError: the process holding the data dir runs no
            embedded server of the kind needed.
    """
    service = settings.service.model_copy(update={"actors": ("publisher", "store")})
    settings = settings.model_copy(update={"service": service})
    async with AsyncExitStack() as stack:
        settings = await start_embedded_servers(settings, stack, share=True)
        client = await connect_nats(settings.nats.url, settings.nats.connect_wait_s)
        stack.push_async_callback(_drain, client)
        supervisor = build_supervisor(settings, client, offer_import=False)
        async with anyio.create_task_group() as group:
            await group.start(supervisor.run)
            try:
                return await plan.run(client, settings)
            finally:
                await supervisor.stop()


def _failed(event: str, exc: BaseException) -> int:
    """Log each error inside `exc` as `event`; the exit code it calls for."""
    leaves = _leaves(exc)
    for error in leaves:
        log.error(event, error=str(error), error_type=type(error).__name__)
    if any(isinstance(error, ConfigError) for error in leaves):
        return EXIT_CONFIG

    return EXIT_CRASHED


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def start_embedded_servers(
    settings: Settings, stack: AsyncExitStack, *, share: bool = False
) -> Settings:
    """Start nats-server and SecantusDB where no URL is configured, and
    restart either if it dies while the service runs.

    Args:
        share: when another process already runs the data dir's servers,
            use them (a short-lived command, such as `import`) instead of
            refusing to start.

    Returns:
        The settings with the embedded servers' URLs filled in.

    Raises:
        EmbeddedServerError: a server did not start.
        DataDirInUseError: another process runs the data dir's servers, and
            `share` is false, they are not the ones needed, or it does not
            say where they listen.
    """
    data_dir = settings.service.data_dir.resolve()
    wants_nats = not settings.nats.url
    wants_mongo = not settings.mongo.uri and bool(
        NEEDS_MONGO & set(settings.service.actors)
    )
    if not (wants_nats or wants_mongo):
        return settings

    claim = embedded.claim_data_dir(data_dir)
    if claim is None:
        running = await embedded.running_servers(data_dir)
        wanted = (wants_nats, wants_mongo)
        return _with_running(settings, data_dir, running, wanted, share=share)
    stack.callback(claim.release)

    nats_url, mongo_uri = settings.nats.url, settings.mongo.uri
    watchdogs = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(watchdogs.cancel_scope.cancel)
    if wants_nats:
        server = await _run_embedded(embedded.embedded_nats(data_dir), stack, watchdogs)
        nats_url = embedded.nats_url(server)
    if wants_mongo:
        server = await _run_embedded(
            embedded.embedded_mongo(data_dir), stack, watchdogs
        )
        mongo_uri = embedded.mongo_uri(server)
    claim.announce(nats_url if wants_nats else None, mongo_uri if wants_mongo else None)

    return _with_urls(settings, nats_url, mongo_uri)


def _with_running(
    settings: Settings,
    data_dir: Path,
    running: embedded.RunningServers,
    wanted: tuple[bool, bool],
    *,
    share: bool,
) -> Settings:
    """The settings pointed at another process's embedded servers, for the
    ones `wanted` says are not configured (nats, mongo)."""
    wants_nats, wants_mongo = wanted
    nats_url = running.nats_url if wants_nats else settings.nats.url
    mongo_uri = running.mongo_uri if wants_mongo else settings.mongo.uri
    if share and nats_url is not None and mongo_uri is not None:
        log.info("embedded_servers_shared", data_dir=str(data_dir), pid=running.pid)
        return _with_urls(settings, nats_url, mongo_uri)

    urls = [
        f"{name}='{url}'"
        for name, url in (
            ("NATS_URL", running.nats_url),
            ("MONGO_URI", running.mongo_uri),
        )
        if url
    ]
    advice = "stop it, or give this process another --data-dir"
    if urls:
        # One Ticker and Fetcher are enough: each would fetch every tick.
        advice += (
            f", or run more actors beside it with {' '.join(urls)}"
            " and --actors (e.g. store,http_api)"
        )
    raise DataDirInUseError(str(data_dir), running.pid, advice)


def _with_urls(settings: Settings, nats_url: str, mongo_uri: str) -> Settings:
    return settings.model_copy(
        update={
            "nats": settings.nats.model_copy(update={"url": nats_url}),
            "mongo": settings.mongo.model_copy(update={"uri": mongo_uri}),
        }
    )


async def _run_embedded(
    server: embedded.EmbeddedServer, stack: AsyncExitStack, watchdogs: TaskGroup
) -> embedded.EmbeddedServer:
    """Start `server`, stop it when `stack` closes, restart it if it dies."""
    await server.start()
    stack.push_async_callback(server.stop)
    watchdogs.start_soon(embedded.keep_alive, server)

    return server


async def connect_nats(url: str, wait_s: float = NATS_CONNECT_WAIT_S) -> NatsClient:
    """Connect to NATS, waiting up to `wait_s` for a server still starting.

    Raises:
        NatsUnreachableError: no server answered within `wait_s`.
    """
    connected: list[NatsClient] = []
    retrying = AsyncRetrying(
        stop=stop_after_delay(wait_s),
        wait=wait_fixed(0.5),
        retry=retry_if_exception_type(OSError)
        | retry_if_exception_type(nats.errors.NoServersError),
        reraise=True,
    )
    try:
        with anyio.fail_after(wait_s):
            client = await _connect_retrying(url, retrying, _options(connected))
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        # With reconnects allowed, nats-py keeps trying an unreachable
        # server forever: the deadline is ours.
        raise NatsUnreachableError(_without_credentials(url), wait_s) from exc
    connected.append(client)
    log.info("nats_connected", url=_without_credentials(url))

    return client


def _options(connected: list[NatsClient]) -> dict[str, Any]:
    """nats.connect's options: reconnect forever, and log what happens."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))

    async def on_disconnected() -> None:
        if connected and (connected[0].is_draining or connected[0].is_closed):
            log.info("nats_disconnected", reason="drained")
        else:
            log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        metrics.NATS_RECONNECTS.inc()
        log.info("nats_reconnected")

    return {
        "name": "cryptostats",
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
    }


async def _connect_retrying(
    url: str, retrying: AsyncRetrying, options: dict[str, Any]
) -> NatsClient:
    async for attempt in retrying:
        with attempt:
            client = await nats.connect(nats_servers(url), **options)
    return client


def _without_credentials(url: str) -> str:
    shown = []
    for server in nats_servers(url):
        scheme, sep, rest = server.partition("://")
        shown.append(f"{scheme}{sep}{rest.rpartition('@')[2]}")

    return ",".join(shown)


async def _drain(client: NatsClient) -> None:
    with anyio.CancelScope(shield=True):
        if client.is_closed:
            return
        try:
            await client.drain()
        except nats.errors.Error as exc:
            # No server to drain to (an outage): nothing is pending there.
            log.warning("nats_drain_skipped", error=type(exc).__name__)
            with contextlib.suppress(nats.errors.Error, OSError):
                await client.close()
            return
    log.info("nats_drained")


def build_supervisor(
    settings: Settings, client: NatsClient, *, offer_import: bool = True
) -> Supervisor:
    """A supervisor of the actors `settings` names, sharing one NATS client."""
    supervisor: Supervisor
    context = ActorContext(
        client,
        settings,
        states=lambda: supervisor.states(),
        offer_import=offer_import,
    )
    actors: list[Actor] = [
        ACTOR_TYPES[name](context) for name in settings.service.actors
    ]
    supervisor = Supervisor(actors, settings.supervisor)

    return supervisor


async def supervise(settings: Settings, client: NatsClient, started: float) -> int:
    """Run the configured actors until SIGINT/SIGTERM.

    Returns:
        0 after a clean stop.

    Raises:
        ActorBudgetExceededError: an actor kept crashing.
    """
    supervisor = build_supervisor(settings, client)

    async with anyio.create_task_group() as group:
        group.start_soon(_stop_on_signal, supervisor)
        await group.start(_run_then_cancel, supervisor, group)
        log.info(
            "service_ready",
            actors=list(settings.service.actors),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    log.info("service_stopped")
    return 0


async def _run_then_cancel(
    supervisor: Supervisor, group: TaskGroup, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    # Cancelling on a failure too would swallow the failure of an actor that
    # stops before it is ready (a rejected API key): the error must surface.
    await supervisor.run(task_status=task_status)
    group.cancel_scope.cancel()


async def _stop_on_signal(supervisor: Supervisor) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal_received", signal=signal.Signals(signum).name)
            await supervisor.stop()
            return
