"""A real `backbeat up` (plain output) on free base ports, for tests that run what the docs
tell a user to run against `make run`."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.test_up import Output

REPO = Path(__file__).resolve().parents[1]


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (a TIME_WAIT leftover does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def free_bases() -> tuple[int, int]:
    """A gRPC base with 3 and an admin base with 4 free ports in a row (away from the
    defaults, which another `backbeat up` on this machine may hold)."""
    while True:
        base = random.randrange(20_000, 60_000, 10)
        if all(port_free(p) for p in range(base, base + 10)):
            return base, base + 5


@dataclass
class LocalUp:
    proc: subprocess.Popen[str]
    out: Output
    grpc_base: int
    admin_base: int
    token: str

    @property
    def pulse(self) -> str:
        return f"127.0.0.1:{self.grpc_base}"

    @property
    def reverb(self) -> str:
        return f"127.0.0.1:{self.grpc_base + 2}"

    def localize(self, text: str) -> str:
        """Documented commands name `make run`'s default ports: give them this stack's."""
        for default, actual in ((7070, self.grpc_base), (7071, self.grpc_base + 1),
                                (7072, self.grpc_base + 2)):  # fmt: skip
            text = re.sub(rf"(localhost|127\.0\.0\.1):{default}\b", rf"\g<1>:{actual}", text)
        return text

    def env(self) -> dict[str, str]:
        """The environment of a second terminal: this stack's addresses for the commands."""
        return {**os.environ, "BACKBEAT_PULSE_ADDR": self.pulse,
                "BACKBEAT_REVERB_ADDR": self.reverb, "COLUMNS": "80"}  # fmt: skip


@contextlib.contextmanager
def local_up(token: str, cluster: str = "docs", agents: int = 10) -> Iterator[LocalUp]:
    """`backbeat up --no-ui` with its first bar reports published; stopped on exit."""
    grpc_base, admin_base = free_bases()
    argv = [sys.executable, "-m", "backbeat.cli", "up", "--no-ui", "--cluster", cluster,
            "--agents", str(agents), "--token", token, "--grpc-port", str(grpc_base),
            "--admin-port", str(admin_base)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "80"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    out = Output(proc)
    try:
        out.wait_for(r"report bar \d+-\d+", timeout=240, count=2)
        yield LocalUp(proc, out, grpc_base, admin_base, token)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
