"""The package's version, written here and nowhere else (pyproject.toml reads it)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
