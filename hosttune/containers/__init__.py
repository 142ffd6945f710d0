"""Container placement: topology-aware CPU plan, Compose output, live verification."""
