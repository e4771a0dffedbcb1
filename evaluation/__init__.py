"""Retrieval quality: the system's rankings through its gRPC API beside numpy's."""
