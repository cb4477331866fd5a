"""Observability: what the fleet measures about itself."""
