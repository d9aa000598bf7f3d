"""Reports: the architecture comparison table and its PNG plots."""
