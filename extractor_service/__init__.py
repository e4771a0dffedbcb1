"""gRPC service that turns images into CNN embeddings with ONNX Runtime."""
