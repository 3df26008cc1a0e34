"""``backbeat secrets``: check and new-key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backbeat.cli import main
from backbeat.core.signing import Keyring


def test_new_key_creates_and_extends_a_keyring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["secrets", "new-key"]) == 0
    first = Keyring.from_document(capsys.readouterr().out)
    assert len(first) == 1
    path = tmp_path / "keys.json"
    path.write_text(first.to_document())
    assert main(["secrets", "new-key", "--keyring", str(path), "--lead-s", "300"]) == 0
    second = Keyring.from_document(capsys.readouterr().out)
    assert second.keys[0].key_id == first.keys[0].key_id
    assert second.keys[1].activates_ns > first.keys[0].activates_ns


def test_check_fails_in_production_with_problems(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("API_TOKEN", "REDIS_PASSWORD", "NATS_CREDENTIALS", "BEAT_SIGNING_KEYS"):
        monkeypatch.delenv(f"BACKBEAT_SECRET_{name}", raising=False)
        monkeypatch.delenv(f"BACKBEAT_SECRET_{name}_FILE", raising=False)
    monkeypatch.setenv("BACKBEAT_SECRETS_BACKEND", "env")
    monkeypatch.setenv("BACKBEAT_SECRET_API_TOKEN", "changeme")
    monkeypatch.setenv("BACKBEAT_ENV", "development")
    assert main(["secrets", "check"]) == 0
    assert "well-known default" in capsys.readouterr().out
    monkeypatch.setenv("BACKBEAT_ENV", "production")
    assert main(["secrets", "check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["secrets"]["api_token"] == {"loaded": True, "version": 1}
    assert "changeme" not in json.dumps(report)
    monkeypatch.setenv("BACKBEAT_SECRET_API_TOKEN", "Zq8v1kq3Yb0c7n2WmL5pR9tX4sH6jD1eFgA")
    assert main(["secrets", "check"]) == 1  # no Redis, NATS or signing secrets, no TLS
    assert "no Redis password" in capsys.readouterr().out
    for name, value in {
        "REDIS_PASSWORD": "vR7k2Qm9xL4pT8wZ",
        "NATS_CREDENTIALS": "pulse:Hn3bW8qY1sK6dF0j",
        "BEAT_SIGNING_KEYS": "Gk4mP9sW2xV7bN1qL6tR3yH8dF5jC0zA",
    }.items():
        monkeypatch.setenv(f"BACKBEAT_SECRET_{name}", value)
    for name in ("NATS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BACKBEAT_TLS_CERT", "/etc/backbeat/tls.crt")
    monkeypatch.setenv("BACKBEAT_TLS_KEY", "/etc/backbeat/tls.key")
    assert main(["secrets", "check"]) == 0
