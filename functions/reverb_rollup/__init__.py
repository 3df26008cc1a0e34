"""The stateless reverb rollup function: one downbeat event in, at most one BarReport out.

Runtimes (adapters over one handler, ``handler.Rollup``):

* in-process — ``reverb_rollup.inprocess.InProcessRollup`` (tests, embedded stack, trigger);
* HTTP CloudEvents — ``functions/reverb_rollup/main.py``, target ``rollup``
  (``functions-framework``: Cloud Run functions, Knative);
* AWS Lambda — ``reverb_rollup.aws_lambda.handler``.
"""

from reverb_rollup.event import CLOUDEVENT_TYPE, ROLLUP_EVENT_TYPE, RollupEvent
from reverb_rollup.handler import (
    Rollup,
    RollupError,
    RollupHooks,
    RollupOutcome,
    RollupResult,
    RollupSettings,
    WindowNotClosed,
    WrongClusterError,
)
from reverb_rollup.inprocess import InProcessRollup, build_rollup
from reverb_rollup.source import WindowSource

__all__ = [
    "CLOUDEVENT_TYPE",
    "ROLLUP_EVENT_TYPE",
    "InProcessRollup",
    "Rollup",
    "RollupError",
    "RollupEvent",
    "RollupHooks",
    "RollupOutcome",
    "RollupResult",
    "RollupSettings",
    "WindowNotClosed",
    "WindowSource",
    "WrongClusterError",
    "build_rollup",
]
