"""Restoring Qdrant collections all or nothing: held copies of what a restore replaces."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from releasegate.backup.base import StoreBackup, set_file
from releasegate.backup.qdrant_entry import (
    HOLD_MARK,
    METHOD_SCROLL,
    STORE,
    check_files,
    configured_batch_size,
    load_file,
    plan_entry,
)
from releasegate.backup.qdrant_points_file import iter_points_file
from releasegate.config import Settings
from releasegate.errors import CheckFailed, ReleasegateError, RollbackFailed, StateError
from releasegate.stores.qdrant import QdrantStore, connect_settings


def _copy_collection(store: QdrantStore, source: str, target: str, batch_size: int) -> None:
    """Create ``target`` like ``source`` and copy every point; :class:`CheckFailed` if the
    copy does not hold as many points."""
    store.create_collection(target, store.spec(source))
    for batch in store.scroll_batches(source, batch_size):
        store.upsert(target, batch)
    if (want := store.count(source)) != (got := store.count(target)):
        raise CheckFailed(f"copying {source} into {target} gave {got} points, not {want}")


class StagedRestore:
    """A Qdrant restore made ready without changing what the service reads.

    Qdrant cannot rename a collection, and the restored collections keep their names (the
    migration version is read from them), so the set cannot be loaded beside the live
    collections. Building this object instead checks everything it can first: the files'
    checksums and, for points files, every point decodes and the trailer counts them;
    then it copies each collection the restore replaces into a held collection
    ``<name>__rgprev_<hex>``. :meth:`commit` drops those collections, loads the set and
    sets its aliases; when that fails it puts the held copies back itself. :meth:`undo`
    does the same after a commit, :meth:`finish` drops the held copies. A failed undo is
    :class:`RollbackFailed`, naming the held copies.
    """

    store = STORE

    def __init__(
        self,
        settings: Settings,
        set_dir: Path,
        entry: StoreBackup,
        *,
        force: bool,
        store: QdrantStore | None = None,
    ):
        self.set_dir, self.entry = set_dir, entry
        self.specs, self.aliases, self.files = plan_entry(entry)
        damaged = check_files(set_dir, entry)
        if damaged:
            raise CheckFailed(
                f"the Qdrant backup is damaged, nothing restored: {damaged[0].describe()}"
                + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else "")
            )
        self.batch_size = configured_batch_size(settings)
        if entry.method == METHOD_SCROLL:
            for collection in self.specs:
                path = set_file(set_dir, self.files[collection])
                for _batch in iter_points_file(path, self.batch_size):
                    pass
        self.owned = store is None
        self.st = connect_settings(settings) if store is None else store
        self.held: dict[str, str] = {}
        self.finished = False
        try:
            self._hold(force)
        except BaseException:
            self.abort()
            raise

    def _hold(self, force: bool) -> None:
        st = self.st
        live = set(st.collections())
        self.aliases_before = st.aliases()
        occupied = {c: st.count(c) for c in self.specs if c in live}
        taken = sorted(a for a in self.aliases if a in live)
        non_empty = {c: n for c, n in occupied.items() if n > 0}
        if (non_empty or taken) and not force:
            what = [f"{c} has {n} points" for c, n in sorted(non_empty.items())]
            what += [f"alias {a} is the name of a collection" for a in taken]
            raise StateError(
                f"Qdrant ({st.target}) is not empty: {', '.join(what)};"
                " restore with force to replace"
            )
        token = uuid.uuid4().hex[:8]
        for name in sorted({*occupied, *taken}):
            self.held[name] = f"{name}{HOLD_MARK}{token}"
            _copy_collection(st, name, self.held[name], self.batch_size)

    def commit(self) -> dict[str, Any]:
        """Replace the collections and aliases; on failure they are put back as they were."""
        restored = {}
        try:
            for name in self.held:
                self.st.drop_collection(name)
            for collection, spec in self.specs.items():
                load_file(
                    self.st,
                    self.set_dir,
                    self.entry,
                    self.files[collection],
                    collection,
                    spec,
                    self.batch_size,
                )
                restored[collection] = self.st.count(collection)
            self.st.set_aliases(self.aliases)
        except ReleasegateError as exc:
            self._put_back()
            raise type(exc)(f"{exc}; the previous collections were put back") from None
        except BaseException:
            self._put_back()
            raise
        return {"collections": restored, "aliases": self.aliases}

    def _put_back(self) -> None:
        """Drop what the restore created, copy each held collection back under its name,
        point the aliases as before, drop the held copies."""
        st = self.st
        try:
            for name in self.specs:
                if st.exists(name):
                    st.drop_collection(name)
            for name, hold in self.held.items():
                if st.exists(name):
                    st.drop_collection(name)
                _copy_collection(st, hold, name, self.batch_size)
            for alias in set(st.aliases()) - set(self.aliases_before):
                st.delete_alias(alias)
            live = set(st.collections())
            st.set_aliases({a: c for a, c in self.aliases_before.items() if c in live})
        except ReleasegateError as exc:
            held = ", ".join(self.held.values()) or "no collection"
            self.finished = True  # the held copies are all that is left: keep them
            if self.owned:
                self.st.close()
            raise RollbackFailed(
                f"putting the previous Qdrant collections back failed ({exc});"
                f" they are kept in {held}"
            ) from None
        self.finish()

    def abort(self) -> None:
        """Drop the held copies: the live collections were never touched."""
        self.finish()

    def undo(self) -> None:
        """Put the collections and aliases back as they were before :meth:`commit`."""
        self._put_back()

    def finish(self) -> None:
        """Drop the held copies (and close a store opened here); once only."""
        if self.finished:
            return
        self.finished = True
        try:
            for hold in self.held.values():
                if self.st.exists(hold):
                    self.st.drop_collection(hold)
        finally:
            if self.owned:
                self.st.close()
