"""Shipway: a production layer for AI models."""

__version__ = "0.1.0"
