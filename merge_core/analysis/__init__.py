"""Similarity between two models (per key, per block, ASimilarity per attention site, token norms) and its charts."""
