"""HTTP CloudEvents runtime (Cloud Run functions, Knative) via ``functions-framework``::

    functions-framework --source functions/reverb_rollup/main.py --target rollup \\
        --signature-type cloudevent

The CloudEvent's ``data`` is the rollup event's JSON object; its ``traceparent`` extension
attribute (CloudEvents distributed tracing) is used when the data carries none. A failure
answers HTTP 500, so the caller retries.
"""

from __future__ import annotations

from typing import Any

import functions_framework

from reverb_rollup.process import runtime


@functions_framework.cloud_event
def rollup(cloud_event: Any) -> None:
    data = cloud_event.data
    if data is None:
        raise ValueError("the CloudEvent carries no data; expected the rollup event JSON")
    traceparent = cloud_event.get("traceparent") or ""
    runtime().invoke(data, traceparent=str(traceparent), via="cloudevents")
