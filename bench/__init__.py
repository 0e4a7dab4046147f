"""Benchmark harness: direct (client → mock), nginx and cancelproxy side by side.

``python -m bench [--quick] [--only SCENARIO ...] [--json FILE]``; see BENCHMARKS.md.
Everything runs on 127.0.0.1: the mock provider, the proxy and nginx as
subprocesses, the load generator in a few client processes (``workers``).
"""
