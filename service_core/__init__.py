"""The small gRPC server bootstrap that both services share."""
