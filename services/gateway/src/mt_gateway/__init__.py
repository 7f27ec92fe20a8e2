"""The REST gateway: the mobile-style client's API (DESIGN.md §3) over the gRPC services."""
