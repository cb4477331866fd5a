"""Deployment artefacts derived from the fleet's own configuration (see infra/terraform/)."""
