"""Reverb ingest: validates status claims and buffers them per window for the rollup.

``ClaimIngest`` takes claims from NATS and gRPC into the store; ``WindowStore`` is the one way
into the buffered windows (the rollup function reads closed windows through it). These names
are the package's surface; its other modules (the gRPC service, the server and its command,
the Lua scripts, the metrics) are the component's inside. The server is started by
``backbeat reverb`` (``backbeat.reverb.server.ReverbServer`` when embedding it).
"""

from backbeat.errors import NotReadyError
from backbeat.reverb.ingest import ClaimIngest, ClaimOutcome, IngestSettings
from backbeat.reverb.store import AppendBatch, Outcome, StoreSettings, WindowDetail, WindowStore

__all__ = [
    "AppendBatch",
    "ClaimIngest",
    "ClaimOutcome",
    "IngestSettings",
    "NotReadyError",
    "Outcome",
    "StoreSettings",
    "WindowDetail",
    "WindowStore",
]
