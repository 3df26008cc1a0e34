"""Structured logs: JSON lines with cluster, node, term, beat_index, window_id and trace_id
where they apply; LOG_LEVEL respected; no secret in any line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.node import Role
from backbeat.pulse.server import PulseServer
from backbeat.pulse.settings import PulseSettings
from backbeat.service.logs import configure_logging, get_logger

pytestmark = pytest.mark.integration


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # every structured line parses
    return out


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    structlog.reset_defaults()


async def test_pulse_lines_carry_cluster_node_term_and_beat(
    capsys: pytest.CaptureFixture[str],
    spans: InMemorySpanExporter,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
) -> None:
    configure_logging("debug", json=True)
    server = PulseServer(
        PulseSettings(
            cluster_id=cluster_id,
            node_id="pulse-logs",
            redis_urls=tuple(s.url for s in redis_servers),
            nats_url=nats_server.url,
            tempo_bpm=240.0,
            admin_port=-1,
        )
    )
    async with server:
        deadline = time.monotonic() + 15
        while server.node.role is not Role.LEADER:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    lines = json_lines(capsys.readouterr().err)
    leading = [x for x in lines if "leading term" in x.get("event", "")]
    assert leading, lines
    line = leading[0]
    assert line["cluster"] == cluster_id
    assert line["node"] == "pulse-logs"
    assert line["term"] >= 1
    assert isinstance(line["beat_index"], int)
    assert len(line["window_id"]) == 32
    assert {"timestamp", "level", "event"} <= set(line)


def test_trace_ids_and_level_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    from opentelemetry import trace

    from backbeat.service.tracing import configure_tracing

    configure_tracing("test")
    configure_logging("warn", json=True)
    log = get_logger(component="reverb-trigger", cluster="c1")
    with trace.get_tracer("t").start_as_current_span("reverb.trigger") as span:
        log.info("hidden below warn")
        log.warning("rollup failed", window_id="a" * 32, beat_index=8, term=3)
    [line] = json_lines(capsys.readouterr().err)
    assert line["event"] == "rollup failed"
    assert line["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert (line["cluster"], line["beat_index"], line["term"]) == ("c1", 8, 3)


def output_once_started(process: subprocess.Popen[str], within_s: float = 90.0) -> tuple[str, str]:
    """stdout and stderr of ``process``, stopped once its "starting" line came (or after
    ``within_s``)."""
    assert process.stdout is not None
    assert process.stderr is not None
    stderr_lines: list[str] = []
    started = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_lines.append(line)
            if '"event": "starting"' in line:
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    started.wait(within_s)
    process.kill()
    stdout = process.stdout.read()
    process.wait(timeout=30)
    reader.join(timeout=30)
    process.stdout.close()
    process.stderr.close()
    return stdout, "".join(stderr_lines)


def test_log_level_env_and_no_secrets_in_a_commands_output() -> None:
    token = "do-not-print-" + "z" * 24
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKBEAT_", "VAULT_"))}
    env.update(
        LOG_LEVEL="debug",
        BACKBEAT_SECRET_REDIS_PASSWORD="hunter2-hunter2-hunter2",
        BACKBEAT_SECRET_NATS_CREDENTIALS="user:nats-pass-nats-pass",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "backbeat.cli", "reverb-trigger", "--nats",
         "nats://127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0", "--admin-port", "0"],
        env=env | {"BACKBEAT_SECRET_API_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # NATS is unreachable: it logs its start, then keeps trying. Stopped once it has logged
    # its start (a loaded machine may take many seconds to import and start it).
    stdout, stderr = output_once_started(process)
    output = stdout + stderr
    lines = json_lines(stderr)
    assert any(x.get("event") == "starting" for x in lines), output
    for secret in (token, "hunter2-hunter2-hunter2", "nats-pass-nats-pass"):
        assert secret not in output
    starting = next(x for x in lines if x.get("event") == "starting")
    assert starting["nats_url"] == "nats://user:***@127.0.0.1:1"
