"""The protocol adapters: the native `framewire.v1.ModelInference` servicer
(`native`, with its message conversion in `native_messages`) and the Open
Inference Protocol servicer (`oip`, with its tensor conventions in
`oip_tensors`). Both are thin: they turn protocol messages into domain
values through `service.requests`, lease a model from the repository, read
it only through its `ModelView`, and map failures to status codes through
`grpc_errors`.

Importing this package imports nothing: the task handlers use
`oip_tensors` from worker processes, which must not import grpc.
"""
