"""LightningModules (systems): they own losses, metrics and optimization; models come injected."""
