"""The tracking engine: sam2 1.1.0's video-predictor semantics over stage graphs, in numpy."""
