"""Prices, token budgets, spend attribution and cost-aware routing."""
