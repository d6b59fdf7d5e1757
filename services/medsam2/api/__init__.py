"""The gRPC API: generated stubs (``api.pb``) and the conversions between them and domain types."""
