"""Labelled data: MedSAM2's npz training format (reading and writing, with provenance) and synthetic cases."""
