"""HTTP CloudEvents runtime (Cloud Run functions, Knative) via ``functions-framework``::

    functions-framework --source functions/reverb_rollup/main.py --target rollup \\
        --signature-type cloudevent

The CloudEvent's ``data`` is the rollup event's JSON object; its ``traceparent`` extension
attribute (CloudEvents distributed tracing) is used when the data carries none. The request
must carry ``X-Backbeat-Signature`` over its body (``invocation_auth``). Answers: 401 for a
missing or wrong signature, 400 for a malformed event, 425 (Too Early) for a window whose
closing downbeat has not come yet on this function's clock, 500 for a failure the caller
retries.
"""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from backbeat.errors import CodecError
from reverb_rollup.handler import WindowNotClosed, WrongClusterError
from reverb_rollup.invocation_auth import SIGNATURE_HEADER, InvocationRefused
from reverb_rollup.process import runtime

_TOO_EARLY = 425


def _refuse(status: int, message: str) -> None:
    # A plain-text answer of our own (werkzeug has no exception class for 425).
    flask.abort(flask.Response(message + "\n", status=status, mimetype="text/plain"))


@functions_framework.cloud_event
def rollup(cloud_event: Any) -> None:
    request = flask.request
    data = cloud_event.data
    if data is None:
        _refuse(400, "the CloudEvent carries no data; expected the rollup event JSON")
    traceparent = cloud_event.get("traceparent") or ""
    try:
        runtime().invoke(
            request.get_data(),
            signature=request.headers.get(SIGNATURE_HEADER),
            data=data,
            traceparent=str(traceparent),
            via="cloudevents",
        )
    except InvocationRefused as exc:
        _refuse(401, str(exc))
    except (CodecError, WrongClusterError) as exc:
        _refuse(400, str(exc))
    except WindowNotClosed as exc:
        _refuse(_TOO_EARLY, str(exc))
