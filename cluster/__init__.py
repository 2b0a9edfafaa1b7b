"""orl-fast: cluster."""
