"""cbsa_dense.data."""
