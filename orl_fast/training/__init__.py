"""orl-fast: training (the loop, the schedules, Stage 1, Stage 3 and their launcher)."""
