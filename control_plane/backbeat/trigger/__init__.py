"""The reverb trigger: invokes the rollup function for every closed window (``backbeat
reverb-trigger``)."""

from backbeat.errors import InvokeError
from backbeat.trigger.invokers import HttpInvoker, InProcessInvoker, Invoker, LambdaInvoker
from backbeat.trigger.service import ReverbTrigger, TriggerSettings, TriggerStatus

__all__ = [
    "HttpInvoker",
    "InProcessInvoker",
    "InvokeError",
    "Invoker",
    "LambdaInvoker",
    "ReverbTrigger",
    "TriggerSettings",
    "TriggerStatus",
]
