"""Generated protobuf and gRPC code for backbeat.v1 (from proto/; never edit by hand)."""
