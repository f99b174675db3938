"""cbsa_dense.models.heads."""
