"""The study of the seed's claims: cost against length, path length, positional encoding, heads
and training efficiency, each measured and turned into a verdict by the numbers (issue #17)."""
