"""The version of hein."""

__version__ = "1.0.0.dev0"
