"""Shipped configs besides `paper` (the defaults of orl_fast/core/defaults.py): small.yaml."""
