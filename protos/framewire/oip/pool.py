"""The descriptor pool holding framewire's Open Inference Protocol messages.

The protocol's messages are named `inference.*`, as are those generated into
tritonclient (and KServe). Registering them in protobuf's default pool would
make importing framewire and such a client in one process fail with
"duplicate symbol"; `make protos` points the generated code here instead.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
