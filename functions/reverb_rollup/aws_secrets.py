"""Secrets Manager references of the Lambda deployment, resolved once per cold start.

The Terraform module passes ``BACKBEAT_SECRET_ARNS``: a JSON object mapping secret names to
AWS Secrets Manager ARNs (no secret value ever passes through Terraform). Each is read once and
exported where the project's env secret backend finds it: ``BACKBEAT_SECRET_<NAME>``, or
``VAULT_SECRET_ID`` / ``VAULT_TOKEN`` for the Vault credentials themselves.

The Lambda Python runtime ships boto3, which reads the secrets; it is not a dependency of the
project. This path is written against the documented GetSecretValue API and has not been run
against AWS here; the name mapping and validation are tested with a plain function.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, MutableMapping

ARNS_VARIABLE = "BACKBEAT_SECRET_ARNS"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Secrets that configure the Vault client rather than the components.
_VAULT_VARIABLES = {"vault_secret_id": "VAULT_SECRET_ID", "vault_token": "VAULT_TOKEN"}

#: Reads one secret's string value by ARN.
SecretFetcher = Callable[[str], str]


def _boto3_fetcher() -> SecretFetcher:
    import boto3  # type: ignore[import-not-found]  # present in the Lambda runtime

    client = boto3.client("secretsmanager")

    def fetch(arn: str) -> str:
        value = client.get_secret_value(SecretId=arn)
        return str(value["SecretString"])

    return fetch


def export_secret_arns(
    env: MutableMapping[str, str] | None = None, fetch: SecretFetcher | None = None
) -> list[str]:
    """Resolve ``BACKBEAT_SECRET_ARNS`` into environment variables; return the names exported.

    A variable that is already set wins (an operator override). Raises ValueError naming the
    problem when the mapping is malformed.
    """
    env = os.environ if env is None else env
    raw = env.get(ARNS_VARIABLE, "").strip()
    if not raw:
        return []
    try:
        mapping = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{ARNS_VARIABLE} is not JSON: {exc}") from None
    if not isinstance(mapping, dict):
        raise ValueError(  # noqa: TRY004 - a configuration error, reported like the others
            f"{ARNS_VARIABLE} must be a JSON object of secret name -> ARN"
        )
    fetch = fetch or _boto3_fetcher()
    exported: list[str] = []
    for name, arn in sorted(mapping.items()):
        if not _NAME.fullmatch(name) or not isinstance(arn, str) or not arn.startswith("arn:"):
            raise ValueError(f"{ARNS_VARIABLE}: {name!r} -> {arn!r} is not a secret name and ARN")
        variable = _VAULT_VARIABLES.get(name, f"BACKBEAT_SECRET_{name.upper()}")
        if env.get(variable):
            continue
        env[variable] = fetch(arn)
        exported.append(variable)
    return exported
