"""cbsa_dense.models.necks."""
