"""Evaluation: perplexity, log-likelihood and generative tasks, and the harness that runs them."""
