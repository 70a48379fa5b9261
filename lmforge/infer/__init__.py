"""Inference: sampling, KV-cache generation, batching, speculative and constrained decoding."""
