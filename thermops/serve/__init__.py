"""Serving without BentoML: request parsing and limits, and the cameras a service knows."""
