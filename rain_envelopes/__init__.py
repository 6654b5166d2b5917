"""RAIN: LIME-style envelopes for research instruments. Public API re-exported here."""
