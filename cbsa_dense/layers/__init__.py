"""cbsa_dense.layers."""
