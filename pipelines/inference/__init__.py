"""Inference: beam search, the translator, evaluation of test sets and the MLflow pyfunc model."""
