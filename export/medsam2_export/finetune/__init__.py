"""Fine-tuning MedSAM2 on labelled npz cases with the paper's recipe (torch; never imported by the runtime)."""
