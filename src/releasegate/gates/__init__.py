"""Release gates: smoke checks against one color and the Locust SLO gate.

Kept free of imports so that the Locust plugin, which runs inside the Locust process,
can import :mod:`releasegate.gates.histogram` without pulling in anything else.
"""
