"""The first NATS connection of a service is bounded: unreachable at start, the command logs one
error naming the URL and exits 1; reachable a little later, it connects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from backbeat.embedded import NatsServer, free_port
from backbeat.errors import NatsUnreachable
from backbeat.processes import ComponentProcess
from backbeat.service.nats_connect import EXIT_UNREACHABLE, connect_nats


async def test_gives_up_after_the_timeout_naming_the_url() -> None:
    url = f"nats://user:pw@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(NatsUnreachable) as caught:
        await connect_nats(url, connect_timeout_s=0.5, reconnect_time_wait=0.1)
    assert 0.4 < time.monotonic() - started < 3.0
    assert caught.value.url == url.replace(":pw@", ":***@")
    assert f"cannot connect to NATS at {caught.value.url} within 0.5 s" in str(caught.value)
    assert "pw@" not in str(caught.value)
    assert "ConnectionRefusedError" in caught.value.last_error


async def test_finite_client_attempts_are_started_over_until_the_timeout() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(NatsUnreachable):
        await connect_nats(
            url, connect_timeout_s=1.0, max_reconnect_attempts=1, reconnect_time_wait=0.05
        )
    assert time.monotonic() - started >= 0.9


def test_a_negative_timeout_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from backbeat.cli import main

    for command in ("pulse", "reverb", "reverb-trigger"):
        assert main([command, "--connect-timeout-s", "-1"]) == 2
        assert "--connect-timeout-s must be 0" in capsys.readouterr().err


@pytest.mark.integration
async def test_connects_when_nats_comes_up_within_the_timeout(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path)
    disconnects: list[str] = []

    async def on_disconnect() -> None:
        disconnects.append("disconnected")

    async def start_later() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)

    starter = asyncio.create_task(start_later())
    try:
        client = await connect_nats(
            server.url,
            connect_timeout_s=15.0,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
            disconnected_cb=on_disconnect,
        )
        try:
            assert client.is_connected
            await client.publish("probe", b"x")
            await client.flush()
        finally:
            await client.close()
        # closing a connected client is news to its callbacks; the failed attempts were not
        assert disconnects == ["disconnected"]
    finally:
        await starter
        server.close()


COMMANDS = {
    "pulse": ["pulse", "--grpc-port", "0", "--admin-port", "-1"],
    "reverb": ["reverb", "--grpc-port", "-1", "--admin-port", "-1"],
    "reverb-trigger": ["reverb-trigger", "--admin-port", "0"],
}


@pytest.mark.integration
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_exits_when_nats_is_unreachable_at_start(command: str, tmp_path: Path) -> None:
    nats_url = f"nats://127.0.0.1:{free_port()}"
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    proc = ComponentProcess(
        command,
        [
            *COMMANDS[command],
            "--nats",
            nats_url,
            "--redis",
            redis_url,
            "--connect-timeout-s",
            "1",
        ],
        log_dir=tmp_path,
        env={"BACKBEAT_ENV": "development", "LOG_LEVEL": "info"},
    )
    started = time.monotonic()
    proc.start()
    try:
        status = proc.wait(timeout=20.0)
    finally:
        proc.close()
    elapsed = time.monotonic() - started
    log = proc.log_path.read_text(errors="replace")
    assert status == EXIT_UNREACHABLE, log
    assert elapsed < 10.0, log
    assert f"cannot connect to NATS at {nats_url} within 1 s" in log
    assert log.count('"level": "error"') == 1, log
    assert "Traceback" not in log
