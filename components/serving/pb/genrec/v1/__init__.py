"""Generated gRPC stubs (python -m components.serving.protogen)."""
