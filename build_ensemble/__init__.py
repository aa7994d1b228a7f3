"""Two-tower retrieval built with Merlin and served as a Triton Inference Server ensemble."""

__version__ = "0.1.0"
