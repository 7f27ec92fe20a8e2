"""minithreads async workers (see :mod:`mt_workers.handlers`)."""
