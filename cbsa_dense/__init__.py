"""cbsa_dense: Contract-and-Broadcast Self-Attention (CBSA) for dense vision.

Layout: ``layers`` (torch building blocks), ``models`` (plain ``nn.Module`` encoders, necks, heads),
``tasks`` (LightningModules), ``data`` (datasets and datamodules), ``metrics`` (torchmetrics Metrics),
``commands`` (the non-training subcommands of ``cbsa-dense``), ``cli`` (the entry point).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load":                  # cbsa_dense.load("last.ckpt"): a predictor (cbsa_dense.predictor)
        from cbsa_dense.predictor import load

        return load
    if name in ("load_official_checkpoint", "load_cbt_checkpoint"):
        from cbsa_dense.models import official

        return getattr(official, name)
    raise AttributeError(f"module 'cbsa_dense' has no attribute {name!r}")
