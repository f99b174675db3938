"""The package list: every package under cbsa_dense/, plus the shipped configs (the top-level configs/, which
pyproject.toml's package-dir maps to cbsa_dense.configs). The rest of the build configuration is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["cbsa_dense", "cbsa_dense.*"]), "cbsa_dense.configs"])
