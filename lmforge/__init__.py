"""lmforge: the whole life of a large language model as one readable, fast, tested Python system."""

__version__ = "0.1.0"
