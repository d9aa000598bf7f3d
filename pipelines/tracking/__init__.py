"""MLflow: where the store is, the run structure and lineage, and the model registry."""
