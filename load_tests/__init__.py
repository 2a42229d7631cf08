"""Load generators and benchmarks for framewire (not run in unit CI)."""
