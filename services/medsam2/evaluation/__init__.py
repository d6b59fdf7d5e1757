"""Measure a model on labelled data with the paper's protocol: DSC and NSD per object, summaries, plots."""
