"""The HTTP gateway: a REST/JSON mapping of the gRPC services, generated from their descriptors, plus the web viewer."""
