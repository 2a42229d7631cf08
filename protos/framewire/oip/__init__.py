"""The Open Inference Protocol (KServe v2 / Triton gRPC) messages and service."""
