"""Benchmarks of the training and decoding fast paths on one GPU (see benchmarks/README.md)."""
