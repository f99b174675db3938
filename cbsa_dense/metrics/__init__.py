"""cbsa_dense.metrics."""
