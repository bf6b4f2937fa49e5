"""Throughput benchmarks. Each is a module with a command line: `python -m engine.bench.<name> --help`.
Measured numbers go to bench/NOTES.md with the card, date, command and the prediction made before."""
