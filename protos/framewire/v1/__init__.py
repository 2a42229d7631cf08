"""framewire's v1 wire contract: the generated messages and services
(`artifact_pb2`, `inference_pb2`, ...) and, hand-written beside them, what
both ends of the contract share and a .proto cannot say: the result records
(`results`) and the values unset prediction options mean (`options`).

These live here, not in the client package (framewire/) nor in the server
(service/), because both import them and neither may import the other: the
server must not need the client's modules, and the client installs without
the server's dependencies. This package needs only protobuf and the
standard library, which both sides already have.
"""
