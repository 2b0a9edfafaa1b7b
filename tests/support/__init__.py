"""Test scaffolding: helpers, fixtures data, loopback clusters, simulated mining (not shipped)."""
