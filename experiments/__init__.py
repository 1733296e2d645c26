"""Scripts that turn training runs into the measured tables of docs/results.md and docs/experiments.md."""
