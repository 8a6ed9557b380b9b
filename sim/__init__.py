"""Simulation harness and benchmarks: the real protocol objects in virtual time, and network labs."""
