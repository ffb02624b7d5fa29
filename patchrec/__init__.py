"""patchrec: raw interaction logs -> an LLM next-item recommender with multi-grained patches."""

__version__ = "0.1.0"
__all__ = ["__version__"]
