"""gRPC helpers shared by every service: server lifetime, client channels, error mapping."""
