"""Benchmarks of fewstep (``make bench`` writes BENCHMARKS.md) and the diffusers harness they share with the tests."""
