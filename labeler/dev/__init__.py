"""Scaffolding for the demo, the tests and the benchmarks (not library API): a tiny offline
BLIP-2, local Label Studio and backend servers, synthetic images."""
