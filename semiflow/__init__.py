"""semiflow: deep anomaly detection on the first packets of every connection."""

__version__ = "0.1.0"
