"""Fault injection and checking for the chaos suite (``make chaos``)."""
