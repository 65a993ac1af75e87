"""Benchmarks of the bundle (dev only, never deployed): ``python -m bench.run [--quick]``.

Figures, not pass/fail tests: engine throughput against a naive baseline, peak memory of the
blob path, quota efficiency against the emulator, latency of the HTTP function, and cold-start
import time. Each figure is printed with its target beside it and written to
``bench/results/latest.json``.
"""
