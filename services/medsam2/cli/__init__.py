"""The ``medsam2`` command line."""
