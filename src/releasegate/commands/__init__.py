"""Command-line groups loaded lazily by :mod:`releasegate.cli`, one module per concern."""
