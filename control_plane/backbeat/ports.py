"""Default ports of a local BACKBEAT deployment (the seed's admin ports, gRPC beside them)."""

from __future__ import annotations

PULSE_GRPC_PORTS = (7070, 7071)
PULSE_ADMIN_PORTS = (8080, 8081)
REVERB_GRPC_PORT = 7072
REVERB_ADMIN_PORT = 8082
TRIGGER_ADMIN_PORT = 8083
