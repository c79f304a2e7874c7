"""The HAProxy router in front of blue and green: config, runtime API client, switching.

The core functions live in :mod:`releasegate.router.manager`: :func:`router_up`,
:func:`router_down`, :func:`router_status`, :func:`set_weight`, :func:`promote` and
:func:`rollback`. They are imported lazily here so that ``import releasegate.router``
stays cheap.
"""

from __future__ import annotations
