"""Proteins in (method §2): readers, splits, MMseqs2 clusters, leakage, teacher exposure; training blocks and held-out batches out."""
