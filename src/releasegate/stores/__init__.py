"""Clients for the stores releasegate manages."""
