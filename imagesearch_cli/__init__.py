"""The ``imagesearch`` command: index a folder, search it, map it, over gRPC only."""
