"""The corpus: loading, normalization and filtering, prepared splits, subword models and arrays."""
