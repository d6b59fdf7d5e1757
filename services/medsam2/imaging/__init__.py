"""Intensity preprocessing of medical images (array math only)."""
