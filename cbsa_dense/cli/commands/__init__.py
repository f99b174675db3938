"""Non-training subcommands of ``cbsa-dense``; each module exposes ``main(argv: list[str]) -> int``."""
