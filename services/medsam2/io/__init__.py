"""Reading and writing studies and segmentations (files only; no model code)."""
