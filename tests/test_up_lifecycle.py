"""`backbeat up` as a real process: however it ends (hang-up, SIGKILL), no child outlives it,
its ports are freed and its run directory is gone; its live view keeps the addresses and the
token in sight on an 80×24 terminal; the commands it prints are whole lines."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.local_stack import free_bases, port_free
from tests.test_up import Output, _alive, _children

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "lifecycle-token-0123456789abcdefghij"


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def _listening_ports(lines: list[str]) -> set[int]:
    """Every port the start-up lines name (servers and components)."""
    ports: set[int] = set()
    for line in lines:
        if re.match(r"\s+(redis|nats|pulse-\d|reverb|trigger)\s", line):
            ports |= {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)}
    return ports


@pytest.fixture
def up_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `backbeat up`: its own TMPDIR, so its run directory is seen."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}


def _up_argv(grpc_base: int, admin_base: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "backbeat.cli", "up", "--cluster", "lifecycle",
            "--agents", "5", "--token", TOKEN, "--grpc-port", str(grpc_base),
            "--admin-port", str(admin_base), *extra]  # fmt: skip


def _assert_all_gone(children: set[int], ports: set[int], tmp: Path) -> None:
    _wait(lambda: not [p for p in children if _alive(p)], 30, "every child exited")
    _wait(lambda: all(port_free(p) for p in ports), 30, f"ports {sorted(ports)} free")
    assert list(tmp.iterdir()) == [], "the run directory is left behind"


@pytest.mark.parametrize("stop", [signal.SIGHUP, signal.SIGKILL], ids=["hangup", "killed"])
def test_no_child_outlives_up(up_env: dict[str, str], stop: signal.Signals) -> None:
    grpc_base, admin_base = free_bases()
    proc = subprocess.Popen(
        _up_argv(grpc_base, admin_base, "--no-ui"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**up_env, "COLUMNS": "80"},
    )  # fmt: skip
    out = Output(proc)
    try:
        out.wait_for(r"beat \d+ downbeat", timeout=120)
        ports = _listening_ports(out.lines)
        assert {grpc_base, grpc_base + 1, grpc_base + 2} <= ports  # the base ports were used
        assert {admin_base + i for i in range(4)} <= ports
        children = _children(proc.pid)
        assert len(children) >= 9  # 3 redis + nats + pulse x2, reverb, trigger, agent-sim
        proc.send_signal(stop)
        proc.wait(timeout=60)
        tmp = Path(up_env["TMPDIR"])
        if stop is signal.SIGKILL:
            # Nothing could clean up after a SIGKILL: the children stop by themselves.
            _wait(lambda: not [p for p in children if _alive(p)], 30, "every child exited")
            _wait(lambda: all(port_free(p) for p in ports), 30, "ports free")
        else:
            _assert_all_gone(children, ports, tmp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_printed_commands_are_whole_lines_when_output_goes_to_a_file(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    """What `make run` prints can be pasted: the tempo change is one line that runs as is."""
    grpc_base, admin_base = free_bases()
    log = tmp_path / "up.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            _up_argv(grpc_base, admin_base, "--no-ui"), stdout=sink, stderr=subprocess.STDOUT,
            text=True, env={**up_env, "COLUMNS": "80"}, cwd=tmp_path,
        )  # fmt: skip
    try:
        _wait(lambda: "downbeat" in log.read_text(), 120, "the first downbeat")
        lines = log.read_text().splitlines()
        (command,) = [line.strip() for line in lines if " tempo " in line and "--token" in line]
        assert command.endswith(f"--token {TOKEN}"), command
        # Runnable as printed, from where `backbeat up` was started (no `backbeat` on PATH here).
        path = os.pathsep.join(
            p for p in up_env["PATH"].split(os.pathsep) if not (Path(p) / "backbeat").exists()
        )
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env={**up_env, "PATH": path},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "tempo 126 BPM from beat" in done.stdout
        (grpcurl,) = [line.strip() for line in lines if line.strip().startswith("grpcurl ")]
        assert grpcurl.endswith("backbeat.v1.PulseService/SetTempo"), grpcurl
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_live_view_keeps_addresses_and_token_in_sight_then_a_closed_pane_stops_all(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    grpc_base, admin_base = free_bases()
    socket_path = str(tmp_path / "tmux.sock")

    def tmux(*words: str) -> str:
        done = subprocess.run(["tmux", "-S", socket_path, *words], capture_output=True,
                              text=True, timeout=30, check=True, env=up_env)  # fmt: skip
        return done.stdout

    command = " ".join(_up_argv(grpc_base, admin_base))
    tmux("new-session", "-d", "-x", "80", "-y", "24", f"exec {command}")
    try:
        pid = int(tmux("display-message", "-p", "#{pane_pid}").strip())

        def screen() -> str:
            return tmux("capture-pane", "-p")

        # Long enough for the start-up lines and several reports to have scrolled by.
        _wait(lambda: len(re.findall(r"\d+–\d+ ", screen())) >= 4, 150, "4 bar reports shown")
        shown = screen()
        assert len(shown.splitlines()) <= 24
        assert f"127.0.0.1:{grpc_base} 127.0.0.1:{grpc_base + 1}" in shown, shown
        assert f"127.0.0.1:{grpc_base + 2}" in shown, shown
        assert f"admin :{admin_base}" in shown, shown
        assert TOKEN in shown, shown
        assert "q or Ctrl-C: stop" in shown, shown  # the footer too

        children = _children(pid)
        assert len(children) >= 9
        ports = {grpc_base, grpc_base + 1, grpc_base + 2, *range(admin_base, admin_base + 4)}
        tmux("kill-server")  # the pane is closed: `backbeat up` gets SIGHUP
        _wait(lambda: not _alive(pid), 60, "backbeat up exited")
        _assert_all_gone(children, ports, Path(up_env["TMPDIR"]))
    finally:
        subprocess.run(["tmux", "-S", socket_path, "kill-server"], capture_output=True,
                       check=False, timeout=30)  # fmt: skip
