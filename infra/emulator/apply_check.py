"""Apply the reverb-rollup-lambda module against a local AWS API emulator, inspect what it
created, destroy it and check that nothing is left.

Run by infra/terraform/check.sh (``make infra-check``) with the Python of the tool environment
that holds ``moto[server]`` (and so boto3):

    python apply_check.py --plugin-dir DIR --package build/reverb-rollup-lambda.zip --work DIR

It starts ``moto_server`` on a free loopback port (``MOTO_IAM_LOAD_MANAGED_POLICIES=true``, so
the AWS-managed policy the module attaches exists), points every endpoint of the AWS provider
at it (infra/emulator/main.tf) and never talks to AWS. What the emulator cannot check is in
docs/deploy-aws-lambda.md ("Applied against an emulator").
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
MODULE = HERE.parent / "terraform" / "modules" / "reverb-rollup-lambda"
REGION = "us-east-1"
HANDLER = "reverb_rollup.aws_lambda.handler"
#: The role's only managed policy (the module's own comment says why not the VPC one).
ENI_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaENIManagementAccess"
#: Actions that accept no resource scoping; nothing else may use "*".
UNSCOPED_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


class CheckFailed(AssertionError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)
    print(f"  ok  {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """A moto_server on a free loopback port; its URL."""
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailed(f"moto_server did not start; log: {log_path}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def terraform(work: Path, *args: str, endpoint: str, package: Path) -> str:
    """Run terraform in ``work``; its output (CheckFailed, with the output shown, on failure)."""
    variables = ["-var", f"endpoint={endpoint}", "-var", f"package_path={package}"]
    argv = ["terraform", f"-chdir={work}", *args, "-no-color"]
    if args[0] in ("init", "apply", "destroy"):
        argv.append("-input=false")
    if args[0] in ("apply", "destroy"):
        argv += ["-auto-approve", *variables]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise CheckFailed(f"terraform {args[0]} failed")
    return done.stdout


def client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="emulator", aws_secret_access_key="emulator")  # fmt: skip


def sha256_b64(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def check_handler_importable(package: Path) -> None:
    """The handler imports from the unpacked zip alone: no site-packages, only the standard
    library (the Lambda runtime's Python has nothing else)."""
    if sys.version_info[:2] != (3, 11):  # the zip holds compiled modules for python3.11
        print(f"  NOT CHECKED: {HANDLER} import (this Python is not 3.11, the Lambda runtime's)")
        return
    with tempfile.TemporaryDirectory() as unpacked:
        with zipfile.ZipFile(package) as archive:
            archive.extractall(unpacked)
        module, _, name = HANDLER.rpartition(".")
        code = (
            f"import sys; sys.path.insert(0, {unpacked!r}); import importlib; "
            f"h = getattr(importlib.import_module({module!r}), {name!r}); "
            "assert callable(h); print(h.__module__)"
        )
        done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                              text=True, check=False, timeout=120)  # fmt: skip
        check(done.returncode == 0, f"{HANDLER} imports from the built zip alone "
              f"(python{sys.version_info[0]}.{sys.version_info[1]}, no site-packages)"
              + ("" if done.returncode == 0 else f": {done.stderr[-2000:]}"))  # fmt: skip


def inspect(out: dict[str, Any], endpoint: str, package: Path) -> None:
    function_name = out["function_name"]
    kms_arn = out["kms_key_arn"]
    fn = client("lambda", endpoint).get_function(FunctionName=function_name)["Configuration"]
    check(fn["CodeSha256"] == sha256_b64(package), "the function's code is the built zip")
    check(fn["Handler"] == HANDLER and fn["Runtime"] == "python3.11", f"handler {HANDLER}")
    check_handler_importable(package)
    vpc = fn.get("VpcConfig", {})
    check(sorted(vpc.get("SubnetIds", [])) == sorted(out["subnet_ids"]),
          "VPC config: the two private subnets")  # fmt: skip
    check(vpc.get("SecurityGroupIds") == [out["security_group_id"]],
          "VPC config: the module's security group only")  # fmt: skip
    check(fn.get("KMSKeyArn") == kms_arn, "environment encrypted with the module's KMS key")
    check(fn.get("TracingConfig", {}).get("Mode") == "Active", "X-Ray tracing active")
    env = fn.get("Environment", {}).get("Variables", {})
    check(env.get("BACKBEAT_CLUSTER") == "emulator" and "BACKBEAT_SECRET_ARNS" in env,
          "environment: cluster and secret references (no secret values)")  # fmt: skip

    iam = client("iam", endpoint)
    role = out["role_name"]
    trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    principals = [s["Principal"] for s in trust["Statement"]]
    check(principals == [{"Service": "lambda.amazonaws.com"}], "role assumable by Lambda only")
    attached = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)
                ["AttachedPolicies"]]  # fmt: skip
    check(attached == [ENI_POLICY], f"one managed policy: {ENI_POLICY.rsplit('/', 1)[1]}")
    (inline,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=inline)["PolicyDocument"]
    if isinstance(document, str):
        document = json.loads(document)
    for statement in document["Statement"]:
        actions = set(_as_list(statement["Action"]))
        resources = _as_list(statement["Resource"])
        check(not any(a == "*" or a.endswith(":*") for a in actions),
              f"{statement['Sid']}: named actions only")  # fmt: skip
        check("*" not in resources or actions <= UNSCOPED_ACTIONS,
              f"{statement['Sid']}: resources scoped")  # fmt: skip

    ec2 = client("ec2", endpoint)
    rules = ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [out["security_group_id"]]}]
    )["SecurityGroupRules"]
    check(not [r for r in rules if not r["IsEgress"]], "security group: no ingress")
    egress = sorted((r["FromPort"], r.get("CidrIpv4")) for r in rules if r["IsEgress"])
    check(egress == [(4222, "10.42.11.0/24"), (6379, "10.42.10.0/24")],
          f"security group: egress to NATS and Redis only {egress}")  # fmt: skip

    sqs = client("sqs", endpoint)
    queue_url = sqs.get_queue_url(QueueName=out["dlq_name"])["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    check(attributes.get("KmsMasterKeyId") == kms_arn, "dead-letter queue encrypted with the key")
    policy = json.loads(attributes.get("Policy", "{}"))
    check(any(s.get("Sid") == "DenyInsecureTransport" for s in policy.get("Statement", [])),
          "dead-letter queue refuses insecure transport")  # fmt: skip

    kms = client("kms", endpoint)
    key_id = kms_arn.rsplit("/", 1)[1]
    check(kms.describe_key(KeyId=key_id)["KeyMetadata"]["Enabled"], "KMS key enabled")
    check(kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"], "KMS key rotation on")
    groups = client("logs", endpoint).describe_log_groups(logGroupNamePrefix=out["log_group_name"])[
        "logGroups"
    ]
    check(len(groups) == 1 and groups[0].get("kmsKeyId") == kms_arn,
          "log group encrypted with the key")  # fmt: skip


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def check_nothing_left(out: dict[str, Any], endpoint: str, work: Path, package: Path) -> None:
    state = terraform(work, "state", "list", endpoint=endpoint, package=package)
    check(not state.strip(), "terraform state empty")
    functions = client("lambda", endpoint).list_functions()["Functions"]
    check(not functions, "no Lambda function left")
    try:
        client("iam", endpoint).get_role(RoleName=out["role_name"])
        check(False, "no role left")
    except ClientError as exc:
        check(exc.response["Error"]["Code"] == "NoSuchEntity", "no role left")
    check(not client("sqs", endpoint).list_queues().get("QueueUrls"), "no queue left")
    groups = client("logs", endpoint).describe_log_groups()["logGroups"]
    check(not groups, "no log group left")
    key = client("kms", endpoint).describe_key(KeyId=out["kms_key_arn"].rsplit("/", 1)[1])
    check(key["KeyMetadata"]["KeyState"] == "PendingDeletion", "KMS key scheduled for deletion")
    vpcs = client("ec2", endpoint).describe_vpcs(
        Filters=[{"Name": "cidr", "Values": ["10.42.0.0/16"]}]
    )["Vpcs"]
    check(not vpcs, "no VPC left")
    secrets = client("secretsmanager", endpoint).list_secrets()["SecretList"]
    check(not secrets, "no secret left")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin-dir", required=True, help="local provider folder")
    parser.add_argument("--package", type=Path, required=True, help="the function's zip")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder")
    args = parser.parse_args()
    package = args.package.resolve()
    # A pristine copy of this folder and of the module, laid out as in the repository.
    work = args.work / "emulator"
    shutil.copytree(HERE, work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "*.py"))
    shutil.copytree(MODULE, args.work / "terraform" / "modules" / MODULE.name,
                    ignore=shutil.ignore_patterns(".terraform*", "tests"))  # fmt: skip
    init = ["init", "-backend=false", f"-plugin-dir={args.plugin_dir}"]
    with moto_server(args.work / "moto_server.log") as endpoint:
        terraform(work, *init, endpoint=endpoint, package=package)
        started = time.monotonic()
        applied = terraform(work, "apply", endpoint=endpoint, package=package)
        summary = [line for line in applied.splitlines() if line.startswith("Apply complete")]
        print(f"{summary[0] if summary else 'applied'} ({time.monotonic() - started:.0f} s)")
        out: dict[str, Any] = {}
        try:
            outputs = terraform(work, "output", "-json", endpoint=endpoint, package=package)
            out = {name: value["value"] for name, value in json.loads(outputs).items()}
            inspect(out, endpoint, package)
        finally:
            destroyed = terraform(work, "destroy", endpoint=endpoint, package=package)
            done = [line for line in destroyed.splitlines() if line.startswith("Destroy complete")]
            print(done[0] if done else "destroy: no summary")
        check_nothing_left(out, endpoint, work, package)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        sys.exit(1)
