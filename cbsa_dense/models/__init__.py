"""cbsa_dense.models."""
