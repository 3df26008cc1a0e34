"""AWS Lambda runtime: ``reverb_rollup.aws_lambda.handler``.

The event has the shape of a Lambda function URL / API Gateway request: ``body`` holds the
rollup event's JSON and ``headers`` the ``X-Backbeat-Signature`` over it (``invocation_auth``;
the trigger's ``LambdaInvoker`` sends the same shape with a direct ``Invoke``). An event
without a valid signature is refused, as is a window not closed yet. The W3C trace context
may also come as a ``traceparent`` request header. Returns the result: window id, outcome and
the report.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from reverb_rollup.aws_secrets import export_secret_arns
from reverb_rollup.invocation_auth import SIGNATURE_HEADER, InvocationRefused
from reverb_rollup.process import runtime

_secrets_exported = False


def _unwrap(event: Mapping[str, Any]) -> tuple[bytes, str | None, str]:
    """The request body, its signature and its traceparent header."""
    headers = event.get("headers")
    # HTTP header names are case-insensitive; function URLs deliver them in lower case.
    folded = (
        {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {}
    )
    body = event.get("body")
    if not isinstance(body, str):
        raise InvocationRefused(
            "expected a request with the rollup event in `body` and its "
            f"{SIGNATURE_HEADER} in `headers` (an unsigned event object is refused)"
        )
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    return raw, folded.get(SIGNATURE_HEADER.lower()), folded.get("traceparent", "")


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
    global _secrets_exported  # noqa: PLW0603 - once per cold start, before the first connection
    if not _secrets_exported:
        export_secret_arns()
        _secrets_exported = True
    body, signature, traceparent = _unwrap(event)
    return runtime().invoke(body, signature=signature, traceparent=traceparent, via="lambda")
