"""Shared plumbing of minithreads: settings, logging, telemetry, errors, gRPC and Kafka helpers."""
