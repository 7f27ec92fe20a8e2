"""JSON logging to stdout, each record stamped with the current trace and span ids.

The ids let an operator jump from a log line to its trace in the tracing UI.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex, as the tracing UI shows them) and the service name."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.service = self._service
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else None
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else None
        return True


def setup_logging(service_name: str, level: str = "INFO", json: bool = True) -> None:
    """Route every logger to one stdout handler; idempotent (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(TraceContextFilter(service_name))
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s "
                "%(service)s %(trace_id)s %(span_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(service)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka and grpc are chatty at INFO about reconnects that are normal during start-up.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
