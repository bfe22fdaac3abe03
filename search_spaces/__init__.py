"""Search-space YAML files shipped with kdsweep (one per model-scale family)."""
