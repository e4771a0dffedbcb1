"""gRPC service that stores image embeddings in PostgreSQL and ranks them with cube."""
