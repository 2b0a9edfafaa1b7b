"""orl-fast: the ground floor (configuration, storage, checkpoints, runtime, boxes, networks).

Imports nothing else of the project: every other package builds on it.
"""
