"""Benchmarks, each printed as ratios to a baseline measured in the same run: the engine along momentum streams, whole training steps, half-precision fidelity, the sharded step, a two-task toy."""
