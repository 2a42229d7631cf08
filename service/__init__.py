"""The framewire gRPC server: repository, batching, runners and APIs."""
