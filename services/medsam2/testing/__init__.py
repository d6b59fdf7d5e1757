"""Helpers for tests and development that ship with the package but never run in production paths."""
