"""Inference backends: each implements ``medsam2.engine.backend.StageBackend``."""
