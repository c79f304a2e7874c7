"""What a restore would lose: the loss report ``backup restore`` prints before it acts.

For every scope of the stores to restore (a Postgres table, a Redis key pattern, a
Qdrant collection) the report gives the items there now against the items in the set,
and what the restore would take away:

- **by content**, when the set carries row/key/point fingerprints: the content
  comparison of :mod:`releasegate.backup.content` (per scope ``added`` items, live now
  but not in the set, are lost; ``changed`` ones are overwritten; ``missing`` ones come
  back), with example ids (Postgres: primary keys);
- **by counts**, for sets taken without fingerprints (older sets) or when the comparison
  is not available: the live count against the set's count, so at least ``now - set``
  items are lost. The report says which of the two it used, and why.

A scope that exists now but not in the set (a table created since, say) loses all of it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from releasegate.backup import content
from releasegate.backup.base import StoreBackup
from releasegate.backup.content_diff import ContentDiff
from releasegate.config import Settings
from releasegate.errors import ConfigError, InfraError

UNIT = {"postgres": "rows", "redis": "keys", "qdrant": "points"}
BY_CONTENT = "content"
BY_COUNTS = "counts"
_FIELD = {"added": "lost", "changed": "changed"}


@dataclass
class ScopeLoss:
    """One table, key pattern or collection: now against the set, and what would go."""

    scope: str
    now: int
    in_set: int | None  # None: the set does not have this scope
    # Exactly known by content; None when only counts are known.
    lost: int | None = None  # live now, not in the set
    changed: int | None = None  # in both, other content now: overwritten
    examples: dict[str, list[str]] = field(default_factory=dict)  # "added"/"changed" -> ids

    @property
    def lost_at_least(self) -> int:
        """The items that would be lost: exact by content, else ``now - in set`` (>= 0)."""
        if self.lost is not None:
            return self.lost
        return max(0, self.now - (self.in_set or 0))


@dataclass
class StoreLoss:
    """The scopes of one store and how they were compared."""

    store: str
    method: str  # BY_CONTENT or BY_COUNTS
    note: str | None = None  # why only counts
    scopes: list[ScopeLoss] = field(default_factory=list)

    @property
    def lost_at_least(self) -> int:
        return sum(s.lost_at_least for s in self.scopes)

    @property
    def changed(self) -> int:
        return sum(s.changed or 0 for s in self.scopes)


@dataclass
class LossReport:
    """What restoring a set now would lose, store by store, and who serves traffic."""

    set_id: str
    live_color: str | None
    router: str  # e.g. "blue serves traffic", "not running (...)"
    stores: dict[str, StoreLoss] = field(default_factory=dict)

    @property
    def loses_anything(self) -> bool:
        return any(s.lost_at_least or s.changed for s in self.stores.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "live_color": self.live_color,
            "router": self.router,
            "loses_anything": self.loses_anything,
            "stores": {
                name: {
                    **asdict(loss),
                    "lost_at_least": loss.lost_at_least,
                    "changed": loss.changed,
                }
                for name, loss in self.stores.items()
            },
        }

    def lines(self) -> list[str]:
        """The report for people: per store, one line per scope that differs, then who
        serves traffic."""
        out = [f"restoring backup set {self.set_id} would replace what is there now:"]
        for loss in self.stores.values():
            unit = UNIT[loss.store]
            if loss.method == BY_CONTENT:
                head = (
                    f"compared item by item): {loss.lost_at_least} {unit} would be lost,"
                    f" {loss.changed} overwritten"
                )
            else:
                head = (
                    f"counts only: {loss.note}): at least {loss.lost_at_least} {unit} would be lost"
                )
            out.append(f"  {loss.store} ({head}")
            for scope in loss.scopes:
                if not (scope.lost_at_least or scope.changed or scope.now != scope.in_set):
                    continue
                in_set = "not in the set" if scope.in_set is None else f"{scope.in_set} in the set"
                text = f"    {scope.scope}: {scope.now} now, {in_set}"
                if scope.lost is not None:
                    text += f"; {scope.lost} would be lost, {scope.changed or 0} overwritten"
                elif scope.lost_at_least:
                    text += f"; at least {scope.lost_at_least} would be lost"
                out.append(text)
                for category, ids in scope.examples.items():
                    if ids:
                        label = "lost" if category == "added" else "overwritten"
                        more = ", ..." if len(ids) < (getattr(scope, _FIELD[category]) or 0) else ""
                        out.append(f"      {label}: {', '.join(ids)}{more}")
        out.append(f"  traffic: {self.router}")
        return out


def traffic(settings: Settings) -> tuple[str | None, str]:
    """The live color (None when no color serves) and a line describing the router.

    A router that is not configured usably or not running (its runtime API cannot be
    reached) serves no color.
    """
    from releasegate.router.config import router_config
    from releasegate.router.process import runner_for
    from releasegate.router.state import router_status

    try:
        running = runner_for(settings, router_config(settings)).running()
    except ConfigError as exc:
        return None, f"no live color (no usable router: {exc})"
    except InfraError as exc:
        return None, f"no live color (the router's host does not answer: {exc})"
    if running is None:
        return None, "no live color (the router is not running)"
    try:
        live = router_status(settings).live
    except InfraError as exc:
        return None, f"no live color (the router does not answer: {exc})"
    if live is None:
        return None, "no live color: the router sends no color traffic"
    return live, f"{live} serves traffic"


# -- building the report ------------------------------------------------------------------


def _compare(settings: Settings, set_dir: Path, entry: StoreBackup) -> ContentDiff:
    """The content comparison of one store; :class:`ConfigError` when the set has no
    fingerprints of it (an older set, or ``backup.fingerprints = false``)."""
    if entry.store == "postgres":
        return content.compare_postgres(settings, set_dir, entry)
    if entry.store == "redis":
        return content.compare_redis(settings, set_dir, entry)
    return content.compare_qdrant(settings, set_dir, entry)


def _live_counts(settings: Settings, store: str) -> dict[str, int]:
    """Items per scope now, in the scopes the manifest's counts use."""
    module = importlib.import_module(f"releasegate.backup.{store}")
    live: dict[str, Any] = module.counts(settings)
    return _scopes(store, live)


def _scopes(store: str, counts: dict[str, Any]) -> dict[str, int]:
    if store == "postgres":
        return {t: int(n) for t, n in counts.get("tables", {}).items()}
    if store == "redis":
        patterns = counts.get("patterns") or {"*": counts}
        return {p: int(t.get("keys", 0)) for p, t in patterns.items()}
    return {c: int(v.get("points", 0)) for c, v in counts.get("collections", {}).items()}


def store_loss(settings: Settings, set_dir: Path, entry: StoreBackup) -> StoreLoss:
    """What restoring ``entry`` would lose in its store (see the module docstring)."""
    now = _live_counts(settings, entry.store)
    in_set = _scopes(entry.store, entry.counts)
    names = [*in_set, *(n for n in now if n not in in_set)]
    try:
        diff = _compare(settings, set_dir, entry)
    except ConfigError as exc:
        loss = StoreLoss(entry.store, BY_COUNTS, str(exc))
        loss.scopes = [ScopeLoss(n, now.get(n, 0), in_set.get(n)) for n in names]
        return loss
    loss = StoreLoss(entry.store, BY_CONTENT)
    covered: set[str] = set()
    for found in diff.scopes:
        live_name, set_name = _count_names(entry, found.scope)
        covered |= {live_name, set_name}
        scope = ScopeLoss(found.scope, now.get(live_name, 0), in_set.get(set_name))
        scope.lost, scope.changed = found.added, found.changed
        scope.examples = {
            c: list(found.examples.get(c, [])) for c in ("added", "changed") if c in found.examples
        }
        loss.scopes.append(scope)
    loss.scopes += [ScopeLoss(n, now.get(n, 0), in_set.get(n)) for n in names if n not in covered]
    return loss


def _count_names(entry: StoreBackup, scope: str) -> tuple[str, str]:
    """The names under which the live and the set's counts hold a content scope: a Qdrant
    scope is named after the alias (``docs``, or ``docs -> docs__v2`` when the alias now
    points elsewhere), the counts after the physical collection."""
    if entry.store != "qdrant":
        return scope, scope
    aliases: dict[str, str] = entry.counts.get("aliases", {})
    alias, arrow, target = scope.partition(" -> ")
    in_set = aliases.get(alias, alias)
    return (target if arrow else in_set), in_set


def loss_report(
    settings: Settings,
    set_dir: Path,
    set_id: str,
    entries: Sequence[StoreBackup],
    *,
    live_color: str | None,
    router: str,
) -> LossReport:
    """The loss report of restoring ``entries`` of the set in ``set_dir`` now."""
    report = LossReport(set_id, live_color, router)
    for entry in entries:
        report.stores[entry.store] = store_loss(settings, set_dir, entry)
    return report
