"""orl-fast: orl_fast."""
