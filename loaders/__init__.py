"""orl-fast: loaders."""
