"""The gRPC session service. It knows the engine and the backend protocol, never ONNX."""
