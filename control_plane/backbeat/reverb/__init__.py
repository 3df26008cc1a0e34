"""Reverb ingest: validates status claims and buffers them per window for the rollup.

``WindowStore`` is the one way into the buffered windows (the rollup function reads closed
windows through it); ``ClaimIngest`` takes claims from NATS and gRPC into the store.
"""

from backbeat.reverb.store import AppendBatch, Outcome, StoreSettings, WindowDetail, WindowStore

__all__ = ["AppendBatch", "Outcome", "StoreSettings", "WindowDetail", "WindowStore"]
