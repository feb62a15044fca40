"""animzoo: a PyTorch Lightning model zoo of one-shot image animation."""

__version__ = "0.1.0"

__all__ = ["__version__"]
