"""orl-fast: orl_fast."""

__version__ = "0.1.0"
