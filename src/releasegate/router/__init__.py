"""The HAProxy router in front of blue and green: config, runtime API client, switching.

The core functions: :func:`~releasegate.router.manager.router_up` and
:func:`~releasegate.router.manager.router_down` (running HAProxy),
:func:`~releasegate.router.state.router_status` (who is live), and
:func:`~releasegate.router.switching.set_weight`,
:func:`~releasegate.router.switching.promote` and
:func:`~releasegate.router.switching.rollback` (moving traffic). Nothing is imported
here, so that ``import releasegate.router`` stays cheap.
"""

from __future__ import annotations
