"""Progressive canary: real traffic read from the router, and the verdict of each step.

:mod:`releasegate.canary.traffic` reads what HAProxy logged per request (a ring buffer
read through the runtime API) and sums it up per color; :mod:`releasegate.canary.analysis`
judges green against its rules and against blue over the same window.
"""
