"""The catalog queries behind a schema snapshot, and how each row becomes (key, definition).

Each query covers one family of objects for the whole database at once. They run with
search_path = pg_catalog, so every pg_get_*def, format_type and regclass output names user
objects schema-qualified whatever the caller's search_path, and no user-defined operator
or function can shadow a catalog one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = tuple[Any, ...]


# User schemas (no system or excluded ones), and the relations in them that the snapshot
# may show: not members of an extension, not excluded tables.
_CTES = """
WITH ns AS (
    SELECT n.oid, n.nspname
    FROM pg_namespace n
    WHERE n.nspname !~ '^pg_'
      AND n.nspname <> 'information_schema'
      AND n.nspname <> ALL (%(schemas)s::text[])
),
rel AS (
    SELECT c.oid, c.relname, c.relkind, ns.nspname
    FROM pg_class c
    JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND c.relname <> ALL (%(tables)s::text[])
      AND (ns.nspname || '.' || c.relname) <> ALL (%(tables)s::text[])
      AND NOT EXISTS (
          SELECT 1 FROM pg_depend d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
      )
)
"""

_SCHEMAS = _CTES + "SELECT nspname, quote_ident(nspname) FROM ns"

# plpgsql comes with every database; extension versions are left out on purpose, since a
# server upgrade may bump them without any migration.
_EXTENSIONS = """
SELECT e.extname, quote_ident(e.extname), quote_ident(n.nspname)
FROM pg_extension e
JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname <> 'plpgsql'
  AND n.nspname <> ALL (%(schemas)s::text[])
"""

_RELATIONS = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, rel.relkind, c.oid::regclass::text,
       c.relpersistence, c.reloptions, c.relrowsecurity, c.relforcerowsecurity,
       CASE WHEN rel.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
       ARRAY(
           SELECT i.inhparent::regclass::text FROM pg_inherits i
           WHERE i.inhrelid = c.oid ORDER BY i.inhseqno
       ),
       CASE WHEN rel.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       (SELECT quote_ident(s.srvname) FROM pg_foreign_table ft
        JOIN pg_foreign_server s ON s.oid = ft.ftserver WHERE ft.ftrelid = c.oid),
       (SELECT ft.ftoptions FROM pg_foreign_table ft WHERE ft.ftrelid = c.oid)
FROM rel
JOIN pg_class c ON c.oid = rel.oid
WHERE rel.relkind IN ('r', 'p', 'f', 'v', 'm')
"""
)

# Keyed by name, never by attnum: a column dropped and re-added elsewhere is the same
# column. An identity column's sequence options are part of the column, so the sequence's
# own (generated) name never matters.
_COLUMNS = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, a.attname,
       format_type(a.atttypid, a.atttypmod),
       CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::regcollation::text END,
       a.attnotnull, a.attidentity, a.attgenerated,
       pg_get_expr(ad.adbin, ad.adrelid),
       idseq.seqtypid::regtype::text, idseq.seqstart, idseq.seqincrement,
       idseq.seqmin, idseq.seqmax, idseq.seqcache, idseq.seqcycle
FROM rel
JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
LEFT JOIN LATERAL (
    SELECT s.* FROM pg_depend d
    JOIN pg_sequence s ON s.seqrelid = d.objid
    WHERE a.attidentity <> ''
      AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.deptype = 'i'
) idseq ON true
WHERE rel.relkind IN ('r', 'p', 'f')
"""
)

# Indexes that back a primary key, unique or exclusion constraint are shown as that
# constraint only, so one change is not reported twice. Validity is part of the definition:
# a failed CREATE INDEX CONCURRENTLY leaves an INVALID index that must show up.
_INDEXES = (
    _CTES
    + """
SELECT rel.nspname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid AND i.indisready
FROM pg_index i
JOIN rel ON rel.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE NOT EXISTS (
    SELECT 1 FROM pg_constraint con
    WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
      AND con.contype IN ('p', 'u', 'x')
)
"""
)

# Table and domain constraints. NOT NULL is shown with the column or domain (newer servers
# also list it here) and constraint triggers with the triggers. A foreign key that references
# a partitioned table has one clone per referenced partition on the same table, all with
# the parent's name: only the parent is shown.
_CONSTRAINTS = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN rel ON rel.oid = con.conrelid
WHERE con.contype NOT IN ('n', 't')
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint parent
      WHERE parent.oid = con.conparentid AND parent.conrelid = con.conrelid
  )
UNION ALL
SELECT ns.nspname, t.typname, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_type t ON t.oid = con.contypid
JOIN ns ON ns.oid = t.typnamespace
WHERE con.contype NOT IN ('n', 't')
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
  )
"""
)

# Sequences without their current values. Identity sequences belong to their column; a
# sequence owned by an excluded table is excluded with it.
_SEQUENCES = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, c.relpersistence,
       s.seqtypid::regtype::text, s.seqstart, s.seqincrement,
       s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       owner.refobjid::regclass::text, quote_ident(att.attname)
FROM rel
JOIN pg_class c ON c.oid = rel.oid
JOIN pg_sequence s ON s.seqrelid = rel.oid
LEFT JOIN pg_depend owner
       ON owner.classid = 'pg_class'::regclass AND owner.objid = rel.oid
      AND owner.refclassid = 'pg_class'::regclass AND owner.deptype IN ('a', 'i')
LEFT JOIN pg_attribute att
       ON att.attrelid = owner.refobjid AND att.attnum = owner.refobjsubid
WHERE rel.relkind = 'S'
  AND (owner.objid IS NULL
       OR (owner.deptype = 'a' AND owner.refobjid IN (SELECT oid FROM rel)))
"""
)

# Enums (labels in their order), domains, standalone composite types, ranges and base
# types. Implicit array types, table row types and multiranges made with a range follow
# from other objects and are left out.
_TYPES = (
    _CTES
    + """
SELECT ns.nspname, t.typname, t.typtype, t.oid::regtype::text,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e
             WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
       CASE WHEN t.typtype = 'd' AND t.typcollation <> bt.typcollation
            THEN t.typcollation::regcollation::text END,
       t.typnotnull,
       pg_get_expr(t.typdefaultbin, 0),
       ARRAY(SELECT quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid
               AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum),
       (SELECT r.rngsubtype::regtype::text FROM pg_range r WHERE r.rngtypid = t.oid),
       (SELECT r.rngmultitypid::regtype::text FROM pg_range r WHERE r.rngtypid = t.oid),
       (SELECT NULLIF(r.rngsubdiff::oid, 0)::regproc::text
        FROM pg_range r WHERE r.rngtypid = t.oid),
       CASE WHEN t.typtype = 'b' THEN t.typinput::text END,
       CASE WHEN t.typtype = 'b' THEN t.typoutput::text END
FROM pg_type t
JOIN ns ON ns.oid = t.typnamespace
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_class tc ON tc.oid = t.typrelid
WHERE t.typisdefined
  AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
  AND (t.typtype <> 'c' OR tc.relkind = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_type elem WHERE elem.typarray = t.oid)
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
  )
"""
)

# Functions and procedures with their full text; pg_get_functiondef refuses aggregates,
# which are described from pg_aggregate instead. Functions made with another object (the
# constructors of a range type) follow from that object and are left out.
_FUNCTIONS = (
    _CTES
    + """
SELECT ns.nspname, p.proname, oidvectortypes(p.proargtypes), p.prokind,
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
       agg.aggtransfn::text, format_type(agg.aggtranstype, NULL),
       CASE WHEN agg.aggfinalfn::oid <> 0 THEN agg.aggfinalfn::text END,
       CASE WHEN agg.aggcombinefn::oid <> 0 THEN agg.aggcombinefn::text END,
       agg.agginitval, agg.aggkind
FROM pg_proc p
JOIN ns ON ns.oid = p.pronamespace
LEFT JOIN pg_aggregate agg ON agg.aggfnoid = p.oid
WHERE NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype IN ('e', 'i')
)
"""
)

# User triggers; the internal ones that implement foreign keys follow from the constraint.
_TRIGGERS = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, tg.tgname, pg_get_triggerdef(tg.oid), tg.tgenabled
FROM pg_trigger tg
JOIN rel ON rel.oid = tg.tgrelid
WHERE NOT tg.tgisinternal
"""
)

_POLICIES = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, pol.polname, pol.polcmd, pol.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE quote_ident(pg_get_userbyid(r)) END
             FROM unnest(pol.polroles) AS r ORDER BY 1),
       pg_get_expr(pol.polqual, pol.polrelid),
       pg_get_expr(pol.polwithcheck, pol.polrelid)
FROM pg_policy pol
JOIN rel ON rel.oid = pol.polrelid
"""
)

# Rewrite rules other than the _RETURN rule that every view has (shown as the view).
_RULES = (
    _CTES
    + """
SELECT rel.nspname, rel.relname, r.rulename, pg_get_ruledef(r.oid)
FROM pg_rewrite r
JOIN rel ON rel.oid = r.ev_class
WHERE r.rulename <> '_RETURN'
"""
)


def _options(values: list[str] | None) -> str:
    return f" WITH ({', '.join(values)})" if values else ""


def _sequence_options(
    data_type: str, start: int, increment: int, minimum: int, maximum: int, cache: int, cycle: bool
) -> str:
    text = (
        f"AS {data_type} START WITH {start} INCREMENT BY {increment}"
        f" MINVALUE {minimum} MAXVALUE {maximum} CACHE {cache}"
    )
    return text + (" CYCLE" if cycle else "")


def _schema(row: Row) -> tuple[str, str]:
    name, quoted = row
    return f"schema {name}", f"CREATE SCHEMA {quoted}"


def _extension(row: Row) -> tuple[str, str]:
    name, quoted, schema = row
    return f"extension {name}", f"CREATE EXTENSION {quoted} SCHEMA {schema}"


def _relation(row: Row) -> tuple[str, str]:
    (nsp, name, relkind, qualified, persistence, reloptions, rls, force_rls) = row[:8]
    (partkey, partbound, parents, viewdef, server, ftoptions) = row[8:]
    if relkind in ("v", "m"):
        kind = "materialized view" if relkind == "m" else "view"
        head = f"CREATE {kind.upper()} {qualified}{_options(reloptions)}"
        return f"{kind} {nsp}.{name}", f"{head} AS\n{viewdef}"
    kind = "foreign table" if relkind == "f" else "table"
    parts = ["CREATE"]
    if persistence == "u":
        parts.append("UNLOGGED")
    parts += [kind.upper(), qualified]
    if partbound is not None:
        parts += ["PARTITION OF", parents[0], partbound]
    elif parents:
        parts.append(f"INHERITS ({', '.join(parents)})")
    if partkey is not None:
        parts.append(f"PARTITION BY {partkey}")
    if server is not None:
        parts.append(f"SERVER {server}")
        if ftoptions:
            parts.append(f"OPTIONS ({', '.join(ftoptions)})")
    definition = " ".join(parts) + _options(reloptions)
    if rls:
        definition += " ROW LEVEL SECURITY"
    if force_rls:
        definition += " FORCE ROW LEVEL SECURITY"
    return f"{kind} {nsp}.{name}", definition


def _column(row: Row) -> tuple[str, str]:
    (nsp, table, name, data_type, collation, not_null, identity, generated, default) = row[:9]
    seq = row[9:]
    parts = [data_type]
    if collation is not None:
        parts.append(f"COLLATE {collation}")
    if generated == "s":
        parts.append(f"GENERATED ALWAYS AS ({default}) STORED")
    elif default is not None:
        parts.append(f"DEFAULT {default}")
    if identity:
        when = "ALWAYS" if identity == "a" else "BY DEFAULT"
        options = f" ({_sequence_options(*seq)})" if seq[0] is not None else ""
        parts.append(f"GENERATED {when} AS IDENTITY{options}")
    if not_null:
        parts.append("NOT NULL")
    return f"column {nsp}.{table}.{name}", " ".join(parts)


def _index(row: Row) -> tuple[str, str]:
    nsp, name, indexdef, valid = row
    return f"index {nsp}.{name}", indexdef + ("" if valid else " INVALID")


def _constraint(row: Row) -> tuple[str, str]:
    nsp, owner, name, condef = row
    return f"constraint {nsp}.{owner}.{name}", condef


def _sequence(row: Row) -> tuple[str, str]:
    nsp, name, persistence = row[:3]
    options = _sequence_options(*row[3:10])
    owner_table, owner_column = row[10:]
    unlogged = "UNLOGGED " if persistence == "u" else ""
    definition = f"CREATE {unlogged}SEQUENCE {options}"
    if owner_table is not None:
        definition += f" OWNED BY {owner_table}.{owner_column}"
    return f"sequence {nsp}.{name}", definition


def _type(row: Row) -> tuple[str, str]:
    (nsp, name, typtype, qualified, labels, base, collation, not_null, default) = row[:9]
    (attributes, subtype, multirange, subdiff, typinput, typoutput) = row[9:]
    head = f"CREATE TYPE {qualified} AS"
    if typtype == "e":
        quoted = ", ".join("'" + label.replace("'", "''") + "'" for label in labels)
        definition = f"{head} ENUM ({quoted})"
    elif typtype == "d":
        parts = [f"CREATE DOMAIN {qualified} AS {base}"]
        if collation is not None:
            parts.append(f"COLLATE {collation}")
        if default is not None:
            parts.append(f"DEFAULT {default}")
        if not_null:
            parts.append("NOT NULL")
        definition = " ".join(parts)
    elif typtype == "c":
        definition = f"{head} ({', '.join(attributes)})"
    elif typtype == "r":
        options = [f"SUBTYPE = {subtype}", f"MULTIRANGE_TYPE_NAME = {multirange}"]
        if subdiff is not None:
            options.append(f"SUBTYPE_DIFF = {subdiff}")
        definition = f"{head} RANGE ({', '.join(options)})"
    else:
        definition = f"CREATE TYPE {qualified} (INPUT = {typinput}, OUTPUT = {typoutput})"
    return f"type {nsp}.{name}", definition


def _function(row: Row) -> tuple[str, str]:
    nsp, name, args, prokind, functiondef = row[:5]
    transfn, transtype, finalfn, combinefn, initval, aggkind = row[5:]
    signature = f"{nsp}.{name}({args})"
    if prokind != "a":
        kind = "procedure" if prokind == "p" else "function"
        return f"{kind} {signature}", functiondef.strip()
    parts = [f"SFUNC = {transfn}", f"STYPE = {transtype}"]
    if finalfn is not None:
        parts.append(f"FINALFUNC = {finalfn}")
    if combinefn is not None:
        parts.append(f"COMBINEFUNC = {combinefn}")
    if initval is not None:
        parts.append("INITCOND = '" + initval.replace("'", "''") + "'")
    if aggkind != "n":
        parts.append(f"KIND = {aggkind}")
    return f"aggregate {signature}", f"CREATE AGGREGATE {signature} ({', '.join(parts)})"


_TRIGGER_STATES = {"D": " DISABLED", "R": " ENABLE REPLICA", "A": " ENABLE ALWAYS"}


def _trigger(row: Row) -> tuple[str, str]:
    nsp, table, name, triggerdef, enabled = row
    return f"trigger {nsp}.{table}.{name}", triggerdef + _TRIGGER_STATES.get(enabled, "")


_POLICY_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _policy(row: Row) -> tuple[str, str]:
    nsp, table, name, cmd, permissive, roles, using, check = row
    mode = "PERMISSIVE" if permissive else "RESTRICTIVE"
    definition = f"POLICY AS {mode} FOR {_POLICY_COMMANDS.get(cmd, cmd)} TO {', '.join(roles)}"
    if using is not None:
        definition += f" USING ({using})"
    if check is not None:
        definition += f" WITH CHECK ({check})"
    return f"policy {nsp}.{table}.{name}", definition


def _rule(row: Row) -> tuple[str, str]:
    nsp, table, name, ruledef = row
    return f"rule {nsp}.{table}.{name}", ruledef


# Every query with the function that turns one of its rows into (key, definition).
QUERIES: tuple[tuple[str, Callable[[Row], tuple[str, str]]], ...] = (
    (_SCHEMAS, _schema),
    (_EXTENSIONS, _extension),
    (_RELATIONS, _relation),
    (_COLUMNS, _column),
    (_INDEXES, _index),
    (_CONSTRAINTS, _constraint),
    (_SEQUENCES, _sequence),
    (_TYPES, _type),
    (_FUNCTIONS, _function),
    (_TRIGGERS, _trigger),
    (_POLICIES, _policy),
    (_RULES, _rule),
)
