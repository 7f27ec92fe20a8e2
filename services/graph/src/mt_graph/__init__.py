"""The graph service: The follow graph, the synthetic legacy (Instagram) graph and imports."""
