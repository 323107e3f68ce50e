"""Offline learning: datasets from labelled captures, training, evaluation."""
