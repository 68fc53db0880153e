"""Measured comparisons for lora_tune (issue 7): `python -m benchmarks.run` writes results.json and results.md."""
