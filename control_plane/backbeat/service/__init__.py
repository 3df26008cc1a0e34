"""Building blocks every BACKBEAT service shares: logs, settings, admin HTTP, gRPC, signals.

Each is thin and named after what it talks to; components (pulse, reverb, trigger) compose
them rather than re-implementing them.
"""

from backbeat.service.admin import AdminServer, json_response
from backbeat.service.lifecycle import ShutdownSignal
from backbeat.service.logs import configure_logging, get_logger
from backbeat.service.rpc import BearerAuth, GrpcServer, abort_with_reason
from backbeat.service.settings import Environment, env_default, masked

__all__ = [
    "AdminServer",
    "BearerAuth",
    "Environment",
    "GrpcServer",
    "ShutdownSignal",
    "abort_with_reason",
    "configure_logging",
    "env_default",
    "get_logger",
    "json_response",
    "masked",
]
