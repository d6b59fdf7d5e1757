"""Model artefacts: published checkpoints, versions in a model repository, and their provenance."""
