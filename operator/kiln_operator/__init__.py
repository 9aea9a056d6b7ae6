"""Kiln's operator: pure builders and decisions, and the kopf shell that applies them."""
