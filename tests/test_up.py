"""`backbeat up` end to end, as a user runs it: beats, bar reports, a tempo change, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "up-test-token"


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Output:
    """Collects a process's stdout lines on a thread; ``wait_for`` polls with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._reader.join(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [m for line in list(self.lines) if (m := regex.search(line))]
            if len(matches) >= count:
                return matches
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = "\n".join(self.lines[-40:])
        raise AssertionError(f"no {count}× {pattern!r} within {timeout}s; output:\n{tail}")


def test_up_shows_beats_reports_and_tempo_change_then_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "backbeat.cli", "up", "--no-ui", "--cluster", "uptest",
            "--agents", "20", "--token", TOKEN, "--run-dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    out = Output(proc)
    try:
        (pulse,) = out.wait_for(r"pulse-1\s+gRPC (127\.0\.0\.1:\d+)", timeout=90)
        started = time.monotonic()
        out.wait_for(r"beat \d+ downbeat", timeout=30)
        out.wait_for(r"report bar \d+-\d+", timeout=30 - (time.monotonic() - started), count=3)
        children = _children(proc.pid)
        # 3 Redlock masters + the claims store + nats + pulse x2, reverb, trigger, agent-sim
        assert len(children) >= 6 + 4
        (claims_url,) = out.wait_for(r"claims\s+(redis://\S+)", timeout=1)
        # The claims store keeps accepted claims: an append-only file synced every second.
        store = redis.Redis.from_url(claims_url[1])
        try:
            config = store.config_get("append*")
        finally:
            store.close()
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec"), config

        changed = subprocess.run(
            [sys.executable, "-m", "backbeat.cli", "tempo", "126", "--pulse", pulse[1],
             "--token", TOKEN, "--json"],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        assert changed.returncode == 0, changed.stdout + changed.stderr
        effective = int(re.search(r'"effective_beat": (\d+)', changed.stdout)[1])  # type: ignore[index]
        (switch,) = out.wait_for(r"tempo 120 → 126 BPM at beat (\d+)", timeout=30)
        assert int(switch[1]) == effective
        assert effective % 4 == 0  # a downbeat: bars of 4 beats from beat 0

        unauthenticated = subprocess.run(
            [sys.executable, "-m", "backbeat.cli", "tempo", "132", "--pulse", pulse[1]],
            capture_output=True, text=True, env={**env, "BACKBEAT_API_TOKEN": ""}, timeout=30,
            check=False,
        )  # fmt: skip
        assert unauthenticated.returncode == 2
        assert "UNAUTHENTICATED" in unauthenticated.stdout

        # The operator commands against the live stack, as the docs show them.
        reverb = out.wait_for(r"reverb\s+gRPC (127\.0\.0\.1:\d+)", timeout=1)[0][1]

        def ctl_all(*words: str) -> list[Any]:
            """Every JSON document a command prints (streams print one per item)."""
            done = subprocess.run(
                [sys.executable, "-m", "backbeat.cli", *words, "--json"],
                capture_output=True, text=True, env=env, timeout=30, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            decoder, text, docs = json.JSONDecoder(), done.stdout.strip(), []
            while text:
                doc, end = decoder.raw_decode(text)
                docs.append(doc)
                text = text[end:].lstrip()
            return docs

        def ctl(*words: str) -> Any:
            (doc,) = ctl_all(*words)
            return doc

        status = ctl("status", "--pulse", pulse[1], "--reverb", reverb)
        assert status["pulse"]["cluster_id"] == "uptest"
        assert status["pulse"]["leader_id"] in {"pulse-1", "pulse-2"}
        assert status["windows"]
        windows = ctl("windows", "--reverb", reverb, "--limit", "5")
        reported = [w for w in windows if w["status"] == "reported"]
        assert reported, windows
        detail = ctl("windows", reported[0]["window_id"], "--reverb", reverb)
        assert detail["report"]["window_id"] == reported[0]["window_id"]
        replay = ctl("windows", reported[0]["window_id"], "--reverb", reverb,
                     "--recompute", "--redis", claims_url[1])  # fmt: skip
        assert replay["identical"] is True, replay
        first = reported[-1]  # newest first: the oldest reported window listed
        # Replayed in publication order (a window caught up late comes after later ones), so
        # look among the first few from that window on; beat 0 replays from the first window.
        replayed = ctl_all("reports", "--reverb", reverb, "--count", "8", "--token", TOKEN,
                           "--from-beat", str(first["from_beat"]))  # fmt: skip
        assert all(r["to_beat"] >= first["from_beat"] for r in replayed), replayed
        assert first["window_id"] in {r["window_id"] for r in replayed}, (windows, replayed)

        refused = subprocess.run(
            [sys.executable, "-m", "backbeat.cli", "tempo", "200", "--pulse", pulse[1],
             "--token", TOKEN],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        assert refused.returncode == 2
        assert "TEMPO_STEP_TOO_LARGE" in refused.stdout

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, "\n".join(out.lines[-30:])
        out.wait_for(r"stopped after .* every process has exited", timeout=5)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "orphan processes left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_cluster_mode_runs_the_system_on_a_three_node_nats_cluster(tmp_path: Path) -> None:
    """`backbeat up --cluster-mode`: three nats-server nodes, streams kept by all three, a Redis
    Cluster for the claims (three partitions), and the same beats and reports."""
    import urllib.request

    from backbeat.core import subjects

    env = {**os.environ, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "backbeat.cli", "up", "--no-ui", "--cluster-mode",
            "--cluster", "upcm", "--agents", "10", "--token", TOKEN,
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    out = Output(proc)
    try:
        (nats,) = out.wait_for(r"nats\s+(\S+)  \(three-node cluster", timeout=90)
        (claims,) = out.wait_for(r"claims\s+(\S+)  \(Redis Cluster, 3 partitions", timeout=5)
        out.wait_for(r"report bar \d+-\d+: [1-9]\d* agents", timeout=40, count=2)
        assert len(nats[1].split(",")) == 3
        commands = [
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            for pid in _children(proc.pid)
        ]
        nodes = [argv for argv in commands if argv and argv[0].endswith("nats-server")]
        assert len(nodes) == 3
        # The claims store: six Redis nodes in cluster mode (their process title says so),
        # named by the claims URL.
        redis_nodes = [argv for argv in commands if any("[cluster]" in a for a in argv)]
        assert len(redis_nodes) == 6
        assert claims[1].startswith("redis+cluster://")
        assert len(claims[1].split(",")) == 6
        ingest = next(argv for argv in commands if "reverb" in argv and "--node" in argv)
        assert ingest[ingest.index("--claim-partitions") + 1] == "3"
        # Each node's monitoring port says which streams it keeps, and with how many replicas.
        monitor = nodes[0][nodes[0].index("-m") + 1]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{monitor}/jsz?streams=true&config=true", timeout=5
        ) as answer:
            jsz = json.loads(answer.read())
        streams = {
            stream["name"]: stream["config"]["num_replicas"]
            for account in jsz["account_details"]
            for stream in account.get("stream_detail", [])
        }
        assert streams[subjects.downbeat_stream("upcm")] == 3, streams
        assert streams[subjects.timeline_stream("upcm")] == 3, streams
        assert streams[subjects.bar_stream("upcm")] == 3, streams
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "\n".join(out.lines[-30:])
        out.wait_for(r"stopped after .* every process has exited", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
