"""RAIN's ZeroMQ transport."""
