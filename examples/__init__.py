"""Example plugin folders and scripts; installed as ``rain_envelopes.examples``."""
