"""The held-out metrics of method §5 (streamed) and sampling from a model (aa_kl_natural, throughput)."""
