"""BACKBEAT components run as child processes (``backbeat up`` and the fault tests).

A ``ComponentProcess`` is ``python -m backbeat.cli <command> …`` with its output in a log
file, ready when its admin endpoint answers ``GET /health`` (or, without an admin port, as
soon as it runs). Like the embedded servers it can be stopped (SIGTERM), killed (SIGKILL),
paused (SIGSTOP), resumed and restarted.
"""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from backbeat.embedded import ServerProcess


class ComponentProcess(ServerProcess):
    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        admin_port: int | None = None,
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kind = name
        self.args = list(args)
        self.admin_port = admin_port
        self.env = dict(env or {})
        super().__init__(port=admin_port or 0, data_dir=log_dir)
        self.log_path = self.data_dir / f"{name}.log"

    def argv(self) -> Sequence[str]:
        return [sys.executable, "-m", "backbeat.cli", *self.args]

    def _environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}

    def _ready(self) -> bool:
        if self.admin_port is None:
            return True
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=0.5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except http.client.HTTPException:
            # Something else answers on the port (another server took it before the
            # component could): not ready; the component fails to bind and exits, and
            # start() reports that with its log.
            return False
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}" if self.admin_port else ""
