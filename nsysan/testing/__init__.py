"""Helpers for testing analyses on data whose answer is known by construction (not sample data)."""
