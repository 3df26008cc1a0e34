"""``backbeat secrets``: check the secret configuration, or create a signing keyring.

``backbeat secrets check`` prints the settings (secrets masked), which secrets load, and what
production mode would refuse; exit status 1 when there is a problem and BACKBEAT_ENV=production
(or ``--strict``).

``backbeat secrets new-key [--keyring FILE]`` prints a keyring document with a fresh random
key, appended to the keyring in FILE when given (activating after ``--lead-s`` seconds, so
verifiers load it before signers use it).

With ``--ed25519`` it does the same for an Ed25519 private keyring (``frame_signing_keys``,
``report_signing_keys``); ``backbeat secrets public-keys --keyring FILE`` prints the public
keyring of such a private one (``frame_public_keys``, ``report_public_keys``).

``backbeat secrets nats-config --cluster ID`` prints the ``authorization`` block of a
nats-server configuration with one user per role and its permissions; the passwords are
references to the server's environment (``$BACKBEAT_NATS_PULSE_PASSWORD``, ...), so the file
itself holds no secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring
from backbeat.core.signing import Keyring, SigningKey
from backbeat.core.subjects import check_cluster_id, default_cluster_id
from backbeat.errors import SecretError, SigningError
from backbeat.secrets._production import production_problems
from backbeat.secrets._rotation import new_key_id
from backbeat.secrets._settings import SecretsSettings
from backbeat.secrets._source import SecretName
from backbeat.service.nats_permissions import (
    password_references,
    render_authorization,
    role_users,
)
from backbeat.service.settings import Environment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="show settings, loaded secrets and production problems")
    check.add_argument("--strict", action="store_true", help="fail on problems in any env")
    check.add_argument("--json", action="store_true", help="print as JSON")
    new = sub.add_parser("new-key", help="print a keyring document with a fresh signing key")
    new.add_argument("--keyring", help="file with the current keyring document to extend")
    new.add_argument(
        "--lead-s",
        type=float,
        default=120.0,
        help="seconds until the new key activates when extending a keyring (default 120)",
    )
    new.add_argument(
        "--ed25519",
        action="store_true",
        help="an Ed25519 private keyring (frame_signing_keys, report_signing_keys) instead of "
        "the claims' HMAC keyring",
    )
    public = sub.add_parser(
        "public-keys", help="print the public keyring of an Ed25519 private keyring"
    )
    public.add_argument("--keyring", required=True, help="file with the private keyring document")

    nats = sub.add_parser(
        "nats-config", help="print the NATS users and permissions of a cluster (one per role)"
    )
    nats.add_argument("--cluster", default=default_cluster_id(), help="cluster id")


async def _check(settings: SecretsSettings) -> dict[str, object]:
    from backbeat.secrets import open_secret_source

    loaded: dict[str, object] = {}
    async with open_secret_source(settings) as source:
        for name in SecretName:
            try:
                secret = await source.get(name)
            except SecretError as exc:
                loaded[name] = {"loaded": False, "error": str(exc)}
            else:
                loaded[name] = {"loaded": True, "version": secret.version}
        problems = await production_problems(settings, source, os.environ)
    return {"settings": settings.describe(), "secrets": loaded, "production_problems": problems}


def run(args: argparse.Namespace) -> int:
    if args.action == "new-key":
        return _new_ed25519_key(args) if args.ed25519 else _new_key(args)
    if args.action == "public-keys":
        return _public_keys(args.keyring)
    if args.action == "nats-config":
        return _nats_config(args.cluster)
    try:
        settings = SecretsSettings.from_env()
        report = asyncio.run(_check(settings))
    except (ValueError, SecretError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"settings: {report['settings']}")
        for name, state in report["secrets"].items():  # type: ignore[attr-defined]
            print(f"  {name}: {state}")
        problems = report["production_problems"]
        print("production: " + ("OK" if not problems else "would refuse to start:"))
        for problem in problems:  # type: ignore[attr-defined]
            print(f"  - {problem}")
    failing = bool(report["production_problems"])
    return 1 if failing and (args.strict or settings.environment is Environment.PRODUCTION) else 0


def _new_key(args: argparse.Namespace) -> int:
    now = time.time_ns()
    keyring = Keyring()
    if args.keyring:
        try:
            with open(args.keyring, encoding="utf-8") as handle:
                keyring = Keyring.from_document(handle.read())
        except (OSError, SigningError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    activates = now + int(args.lead_s * 1e9) if len(keyring) else now
    key = SigningKey(new_key_id(activates, keyring), os.urandom(32), activates)
    print(Keyring([*keyring.without_expired(now).keys, key]).to_document())
    return 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _new_ed25519_key(args: argparse.Namespace) -> int:
    now = time.time_ns()
    try:
        keyring = PrivateKeyring.from_document(_read(args.keyring)) if args.keyring else None
    except (OSError, SigningError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = keyring.without_expired(now).keys if keyring is not None else ()
    activates = now + int(args.lead_s * 1e9) if keys else now
    taken = Keyring(SigningKey(k.key_id, b"x" * 32, k.activates_ns) for k in keys)
    key_id = new_key_id(activates, taken).replace("beat-", "ed25519-", 1)
    print(PrivateKeyring([*keys, PrivateKey.generate(key_id, activates)]).to_document())
    return 0


def _public_keys(path: str) -> int:
    try:
        print(PrivateKeyring.from_document(_read(path)).public().to_document())
    except (OSError, SigningError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _nats_config(cluster_id: str) -> int:
    try:
        check_cluster_id(cluster_id)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# NATS users of BACKBEAT cluster {cluster_id!r}, one per role (docs/security.md).")
    print("# Generated by `backbeat secrets nats-config`; passwords come from the environment.")
    print(render_authorization(role_users(password_references(), cluster_id)), end="")
    return 0
