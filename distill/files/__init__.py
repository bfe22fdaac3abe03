"""Plumbing every part of distill uses: atomic writes, a full disk named, file digests, numbers in files, checked reading."""
