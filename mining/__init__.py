"""orl-fast: mining."""
