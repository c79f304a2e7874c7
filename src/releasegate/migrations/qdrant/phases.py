"""Qdrant migrations in expand/contract form, for a release whose old version keeps serving.

``migrate up`` builds ``name__vN+1`` and moves the alias at once; in a release the old
version still reads and writes ``name__vN`` until traffic moves. So a release runs each
pending migration in phases:

- :func:`expand` (the ``migrate`` step): build and verify ``name__vN+1`` exactly as
  ``migrate up`` does, but leave the alias on ``name__vN``, which stays the live one. A
  :class:`~releasegate.stores.qdrant_points.BucketDigest` of what was copied goes into the
  ledger event ``qdrant expand NNNN``.
- :func:`switch` (``promote``): catch up the points the old version created, changed or
  deleted since (:mod:`~releasegate.migrations.qdrant.catchup`), verify again, record a
  digest of the new collection, and move the alias in one ``update_collection_aliases``
  call (``qdrant switch NNNN``).
- :func:`contract` (``finalize``): drop ``name__vN``, kept since the expand.
- :func:`undo`: before the switch, drop ``name__vN+1`` (the alias never moved); after
  it, carry the new version's writes back into ``name__vN`` through the module's
  ``down_transform`` and move the alias back, or keep the alias (saying why) when the
  module has none.

Where the state lives: in the collections (which exist, where the alias points) and in
the ledger's lifecycle events, both written before a phase reports success, so every
phase can be re-run after a crash: an expand resumes its copy, a switch catches up again
(its writes are idempotent), an undo or contract skips what is done.

What a migration author provides: a ``transform`` given to ``ctx.rebuild``/``ctx.copy``
that depends on the point alone (it is applied again at the switch, to changed points
only), and for undo after promotion a module-level ``down_transform(point)``. A module
that sets ``expand = False`` cannot run this way (:func:`expand_problems`).

What a concurrent writer can still race: a write to the old collection after the last
catch-up pass of the switch and before the alias moves (one scroll of the new collection
for its digest, plus the verify) is not carried over; the old version's writes through
the alias after the move land in the new collection untransformed. Both windows close
when the old version stops writing before :func:`switch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from releasegate.config import Settings
from releasegate.errors import StateError
from releasegate.ledger import Ledger, StepStatus
from releasegate.migrations.qdrant.catchup import reconcile
from releasegate.migrations.qdrant.context import Mode
from releasegate.migrations.qdrant.engine import (
    CARRY_BACK,
    CONTRACT,
    COPY,
    EXPAND,
    SWITCH,
    UNDO,
    Direction,
    LifecycleEvent,
    Runner,
    blocking_problem,
    lifecycle,
    locked,
    recorded_digest,
    step_name,
)
from releasegate.migrations.qdrant.loading import (
    QdrantMigration,
    QdrantStatus,
    VerificationFailed,
    current_status,
    load_migrations,
)
from releasegate.stores.qdrant import QdrantStore, open_store
from releasegate.stores.qdrant_points import BucketDigest


@dataclass
class PhaseResult:
    """What one phase did: versions before and after, counts, notes, its ledger release."""

    phase: str
    before: str
    after: str
    release_id: int | None = None  # None when there was nothing to do (nothing recorded)
    migrations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add(self, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "duration_s": round(self.duration_s, 3)}


@dataclass(frozen=True)
class _Where:
    """A migration's place in the phases: from the collections and its last ledger event."""

    m: QdrantMigration
    alias: str | None
    old_exists: bool
    new_exists: bool
    last: LifecycleEvent | None  # the latest that did not fail

    @property
    def expanded(self) -> bool:
        return self.alias == self.m.old and self.new_exists and _is(self.last, EXPAND)

    @property
    def switched(self) -> bool:
        """The alias is on the new collection and the old one is kept since the expand."""
        return (
            self.alias == self.m.new
            and self.old_exists
            and self.last is not None
            and self.last.kind in (EXPAND, SWITCH)  # EXPAND: the alias moved, then a crash
        )


def _is(event: LifecycleEvent | None, kind: str) -> bool:
    return event is not None and event.kind == kind and event.status == str(StepStatus.OK)


def _where(
    store: QdrantStore, ledger: Ledger, service: str, migrations: list[QdrantMigration]
) -> list[_Where]:
    aliases, live = store.aliases(), set(store.collections())
    return [
        _Where(
            m,
            aliases.get(m.collection),
            m.old in live,
            m.new in live,
            lifecycle(ledger, service, m.version, failed=False),
        )
        for m in migrations
    ]


def _problems(now: QdrantStatus) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for m in now.pending:
        if not m.expand_form:
            problems.append(
                f"{m.version} ({m.path.name}) sets expand = False: it cannot run while the old"
                " version writes; apply it with 'migrate up' while writers are paused"
            )
        if m.collection in seen:
            problems.append(
                f"{seen[m.collection]} and {m.version} both change {m.collection}: a release"
                " expands one migration per collection; release them one at a time"
            )
        seen.setdefault(m.collection, m.version)
    problem = blocking_problem(now, now.pending)
    return problems + ([problem] if problem else [])


def expand_problems(settings: Settings) -> list[str]:
    """Why the pending Qdrant migrations cannot run in expand form (empty: they can).

    For the release ``plan`` step; reads Qdrant only. Reasons: a module sets
    ``expand = False``; two pending migrations of one collection; a collection that
    ``migrate up`` would refuse (no alias, ahead of the code).
    """
    migrations = load_migrations(settings)
    with open_store(settings) as store:
        return _problems(current_status(store, migrations))


def expanded_state(settings: Settings) -> dict[str, Any] | None:
    """Migrations expanded but not switched, and switched with the old collection kept.

    ``{"expanded": [MIGRATION, ...], "switched": [...]}``: each the migration's
    ``to_dict()`` plus ``alias_target`` and ``recorded`` (the ledger step that says so),
    or None when neither. Reads Qdrant and the ledger, without the lock.
    """
    migrations = load_migrations(settings)
    with open_store(settings) as store, Ledger.open(settings.postgres_url()) as ledger:
        places = _where(store, ledger, settings.service, migrations)
    state: dict[str, list[dict[str, Any]]] = {"expanded": [], "switched": []}
    for place in places:
        key = "expanded" if place.expanded else "switched" if place.switched else None
        if key is not None and place.last is not None:
            recorded = step_name(place.last.kind, place.m.version)
            state[key].append(
                {**place.m.to_dict(), "alias_target": place.alias, "recorded": recorded}
            )
    return state if any(state.values()) else None


# act(runner, places, status, result) -> the places it acts on. Called first with
# runner None, to learn which places need work (nothing is recorded when none do).
Act = Callable[[Runner | None, list["_Where"], QdrantStatus, PhaseResult], list["_Where"]]


def _run_phase(settings: Settings, phase: str, act: Act) -> PhaseResult:
    """Under the release lock, in one ledger release: ``act`` on the places needing it."""
    started = time.monotonic()
    with locked(settings, f"qdrant {phase}", None) as held:
        places = _where(held.store, held.ledger, settings.service, held.migrations)
        now = held.status()
        result = PhaseResult(phase, now.version, now.version)
        todo = act(None, places, now, result)
        if not todo:
            result.notes.append(f"nothing to {phase}")
            result.duration_s = time.monotonic() - started
            return result
        runner = held.start(Direction.DOWN if phase == "undo" else Direction.UP)
        result.release_id = runner.result.release_id
        act(runner, todo, now, result)
        runner.succeed(phase=phase, versions=result.migrations, counts=result.counts)
        result.after = runner.result.after or now.version
        result.duration_s = time.monotonic() - started
        return result


def expand(settings: Settings) -> PhaseResult:
    """Build and verify the new collection of each pending migration; the alias stays.

    Raises :class:`StateError` for what :func:`expand_problems` reports, and
    :class:`MigrationFailed` when a build fails (as ``migrate up``: a copy that was cut
    short is resumed by the next run, a collection that fails verification is dropped).
    """

    def act(
        runner: Runner | None, places: list[_Where], now: QdrantStatus, result: PhaseResult
    ) -> list[_Where]:
        if runner is None:
            problems = _problems(now)
            if problems:
                raise StateError(problems[0])
            pending = {m.version for m in now.pending}
            done = [p for p in places if p.m.version in pending and p.expanded]
            result.notes += [f"{p.m.version} already expanded into {p.m.new}" for p in done]
            return [p for p in places if p.m.version in pending and not p.expanded]
        for place in places:
            runner.check_lock()
            step = runner.up(place.m, Mode.EXPAND)
            result.migrations.append(place.m.version)
            result.add(copied=int(step.detail.get("copied", 0)))
            result.add(**_caught_up(step.detail))
            result.notes.append(
                f"{place.m.new} built and verified; alias {place.m.collection} stays on"
                f" {place.m.old}"
            )
        return places

    return _run_phase(settings, "expand", act)


def _caught_up(detail: dict[str, Any]) -> dict[str, int]:
    counts = detail.get("caught_up", {})
    out = {k: int(counts.get(k, 0)) for k in ("created", "updated", "deleted")}
    return {"caught_up": sum(out.values()), **out}


def switch(settings: Settings) -> PhaseResult:
    """Catch up, verify and move the alias of every expanded migration (no-op if none)."""

    def act(
        runner: Runner | None, places: list[_Where], now: QdrantStatus, result: PhaseResult
    ) -> list[_Where]:
        todo = [p for p in places if p.expanded or (p.switched and _is(p.last, EXPAND))]
        if runner is None:
            return todo
        for place in todo:
            runner.check_lock()
            result.migrations.append(place.m.version)
            if place.switched:  # the alias moved, then the run died before recording it
                _record_switch(runner, place.m)
                result.notes.append(
                    f"{place.m.collection} already pointed at {place.m.new}: switch recorded"
                )
                continue
            step = runner.up(place.m, Mode.SWITCH)
            result.add(**_caught_up(step.detail))
            result.notes.append(f"alias {place.m.collection} moved to {place.m.new}")
        return todo

    return _run_phase(settings, "switch", act)


def _record_switch(runner: Runner, m: QdrantMigration) -> None:
    started = time.monotonic()
    digest = BucketDigest.of(runner.store, m.new, batch_size=runner.section.batch_size)
    runner.event(
        m,
        SWITCH,
        time.monotonic() - started,
        {"from": m.old, "to": m.new, "new_digest": digest.to_data(), "recovered": True},
    )


def contract(settings: Settings) -> PhaseResult:
    """Drop the old collection of every switched migration (kept since the expand)."""

    def act(
        runner: Runner | None, places: list[_Where], now: QdrantStatus, result: PhaseResult
    ) -> list[_Where]:
        todo = [p for p in places if p.switched]
        if runner is None:
            result.notes += [
                f"{p.m.version} is expanded but not switched: {p.m.old} is live, kept"
                for p in places
                if p.expanded
            ]
            return todo
        for place in todo:
            runner.check_lock()
            started = time.monotonic()
            runner.store.drop_collection(place.m.old)
            runner.event(
                place.m,
                CONTRACT,
                time.monotonic() - started,
                {"from": place.m.old, "to": place.m.new, "dropped": place.m.old},
            )
            result.migrations.append(place.m.version)
            result.add(dropped=1)
            result.notes.append(f"{place.m.old} dropped")
        return todo

    return _run_phase(settings, "contract", act)


def undo(settings: Settings, *, promoted: bool) -> PhaseResult:
    """Reverse the phases run so far, newest migration first.

    What is done follows the collections, not ``promoted`` (a note says when they
    disagree): a new collection the alias never moved to is dropped; after a switch the
    new collection's writes since the switch are carried back into the old one through
    the module's ``down_transform``, then the alias moves back and the new collection is
    dropped. Without a ``down_transform`` the alias stays on the new collection (a note
    says why). The old collection must still exist: after :func:`contract` there is
    nothing to undo to.
    """

    def act(
        runner: Runner | None, places: list[_Where], now: QdrantStatus, result: PhaseResult
    ) -> list[_Where]:
        todo = [p for p in reversed(places) if p.switched or _left_by_expand(p)]
        if runner is None:
            return todo
        for place in todo:
            runner.check_lock()
            result.migrations.append(place.m.version)
            if place.switched:
                if not promoted:
                    result.notes.append(
                        f"{place.m.collection} had switched to {place.m.new} before promotion:"
                        " its writes are carried back all the same"
                    )
                _carry_back(runner, place, result)
            else:
                if promoted:
                    result.notes.append(
                        f"alias {place.m.collection} never moved to {place.m.new}:"
                        " nothing to carry back"
                    )
                started = time.monotonic()
                runner.store.drop_collection(place.m.new)
                runner.event(
                    place.m,
                    UNDO,
                    time.monotonic() - started,
                    {"from": place.m.old, "to": place.m.new, "dropped": place.m.new},
                )
                result.add(dropped=1)
                result.notes.append(f"{place.m.new} dropped; {place.m.old} stayed live")
        return todo

    return _run_phase(settings, "undo", act)


def _left_by_expand(place: _Where) -> bool:
    """A new collection beside the live old one, left by an expand (whole or cut short)."""
    if place.alias != place.m.old or not place.new_exists or place.last is None:
        return False
    return place.last.kind in (EXPAND, COPY)


def _carry_back(runner: Runner, place: _Where, result: PhaseResult) -> None:
    m = place.m
    reverse = m.down_transform
    if reverse is None:
        result.notes.append(
            f"{m.version} has no down_transform: the alias {m.collection} stays on {m.new},"
            f" since moving it back to {m.old} would lose the writes made since the switch"
            " (restore from the release's backup to go back)"
        )
        return
    started = time.monotonic()
    since = recorded_digest(place.last, SWITCH, "new_digest")  # None: compare everything
    done = reconcile(
        runner.store, m.new, m.old, reverse, since=since, batch_size=runner.section.batch_size
    )
    old_count, new_count = runner.store.count(m.old), runner.store.count(m.new)
    if old_count != new_count:
        raise VerificationFailed(
            f"carrying {m.new} back into {m.old} left {old_count} points for {new_count};"
            f" alias {m.collection} stays on {m.new}"
        )
    runner.lock.ensure_held()
    runner.store.set_aliases({m.collection: m.old})
    runner.store.drop_collection(m.new)
    detail = {"from": m.new, "to": m.old, "points": old_count, "dropped": m.new}
    runner.event(m, CARRY_BACK, time.monotonic() - started, detail | done.counts())
    result.add(carried_back=done.changed, dropped=1)
    result.notes.append(
        f"{done.changed} point(s) carried back into {m.old}; alias {m.collection} moved back"
    )
