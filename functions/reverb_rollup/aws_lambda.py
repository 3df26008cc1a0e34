"""AWS Lambda runtime: ``reverb_rollup.aws_lambda.handler``.

The event is the rollup event's JSON object (a direct ``Invoke``), or a Lambda function URL /
API Gateway request whose ``body`` holds it. The W3C trace context may also come as a
``traceparent`` request header. Returns the result: window id, outcome and the report.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from reverb_rollup.aws_secrets import export_secret_arns
from reverb_rollup.process import runtime

_secrets_exported = False


def _unwrap(event: Mapping[str, Any]) -> tuple[bytes | Mapping[str, Any], str]:
    headers = event.get("headers")
    traceparent = ""
    if isinstance(headers, Mapping):
        traceparent = str(headers.get("traceparent", ""))
    body = event.get("body")
    if isinstance(body, str) and "window_id" not in event:
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
        return raw, traceparent
    return event, traceparent


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    global _secrets_exported  # noqa: PLW0603 - once per cold start, before the first connection
    if not _secrets_exported:
        export_secret_arns()
        _secrets_exported = True
    data, traceparent = _unwrap(event)
    return runtime().invoke(data, traceparent=traceparent, via="lambda")
