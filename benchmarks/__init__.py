"""Benchmarks of the harness: `python -m benchmarks` lists them, `python -m benchmarks NAME [args]` runs
`benchmarks/bench_NAME.py`; each writes a JSON record to `benchmarks/records/NAME.json`."""
