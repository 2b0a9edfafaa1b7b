"""orl-fast: evaluation."""
