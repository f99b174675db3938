"""cbsa_dense.models.encoders."""
