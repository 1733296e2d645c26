"""Scripts that turn training runs into the measured tables of the README and docs/experiments.md."""
