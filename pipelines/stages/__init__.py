"""The DVC stages, each a thin script: read params, call the library, write outputs atomically."""
