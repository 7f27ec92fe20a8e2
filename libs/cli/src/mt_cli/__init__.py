"""The ``minithreads`` command: runs the local stack from one manifest and talks to it."""
