"""The Lambda deployment's Secrets Manager references become the variables the project reads."""

from __future__ import annotations

import json

import pytest

from reverb_rollup.aws_secrets import ARNS_VARIABLE, export_secret_arns

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/{}-AbCdEf"


def test_each_reference_is_exported_under_its_variable() -> None:
    refs = {"redis_password": ARN.format("redis"), "vault_secret_id": ARN.format("approle")}
    env = {ARNS_VARIABLE: json.dumps(refs), "BACKBEAT_CLUSTER": "c"}
    fetched: list[str] = []

    def fetch(arn: str) -> str:
        fetched.append(arn)
        return f"value-of-{arn.rsplit(':', 1)[1]}"

    exported = export_secret_arns(env, fetch)
    assert sorted(exported) == ["BACKBEAT_SECRET_REDIS_PASSWORD", "VAULT_SECRET_ID"]
    assert env["BACKBEAT_SECRET_REDIS_PASSWORD"] == "value-of-backbeat/redis-AbCdEf"
    assert env["VAULT_SECRET_ID"] == "value-of-backbeat/approle-AbCdEf"
    assert sorted(fetched) == sorted(refs.values())


def test_an_operator_override_wins_and_nothing_is_fetched_for_it() -> None:
    env = {
        ARNS_VARIABLE: json.dumps({"api_token": ARN.format("token")}),
        "BACKBEAT_SECRET_API_TOKEN": "set-by-operator",
    }
    assert export_secret_arns(env, lambda arn: pytest.fail(f"fetched {arn}")) == []
    assert env["BACKBEAT_SECRET_API_TOKEN"] == "set-by-operator"


def test_no_references_is_a_no_op() -> None:
    assert export_secret_arns({}, lambda arn: pytest.fail("no fetch expected")) == []


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "not JSON"),
        ('["a"]', "JSON object"),
        ('{"Bad Name": "arn:aws:x"}', "not a secret name"),
        ('{"redis_password": "plain-value"}', "not a secret name and ARN"),
    ],
)
def test_malformed_references_are_refused_clearly(raw: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        export_secret_arns({ARNS_VARIABLE: raw}, lambda arn: "x")
