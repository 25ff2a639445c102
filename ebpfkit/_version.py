"""The version, in a module of its own: recordings write it without importing the package."""

__version__ = "0.1.0"
