"""The test suite: real PostgreSQL, real gRPC servers on port 0, real ONNX Runtime."""
