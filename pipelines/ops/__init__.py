"""Operations: MLflow tracking, the model registry, scheduled retraining and its lock."""
