"""Planning a bulk upsert: check the rows against the table once, before anything is written.

:func:`read_table` asks the catalog for the target's columns, their types and the unique
indexes the key can use (one round trip per call, never per batch). :func:`make_plan` is
pure: it turns the rows into tuples, refuses every value the table cannot take exactly
(an ``int`` out of range, ``True`` for a number, ``bytes`` for text, a ``str`` that is not
JSON for a json column, ``None`` in a ``NOT NULL`` key) with a :class:`ConfigError` naming
the row and the column, drops earlier rows of a repeated key, decides whether binary COPY
is safe for the whole call and builds every SQL statement the batches will run.

Checks run column by column over C-level passes (``zip``, ``set(map(type, ...))``,
``min``/``max``), so planning 100,000 rows costs a few milliseconds.
"""

from __future__ import annotations

import datetime
import decimal
import gc
import itertools
import json
import operator
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import BulkUpsertError, ConfigError, RowValueError
from ._sql import check_identifier, qualified

if TYPE_CHECKING:
    from psycopg import AsyncConnection, sql

__all__ = ["Column", "TableInfo", "UpsertPlan", "make_plan", "read_rows", "read_table"]

_NONE = type(None)
_INT_RANGES = {21: ("int2", 2**15), 23: ("int4", 2**31), 20: ("int8", 2**63)}
_NUMBER_OIDS = {21, 23, 20, 700, 701, 1700}
_TEXT_OIDS = {25, 1043, 1042}
_JSON_OIDS = {114: "json", 3802: "jsonb"}
_BYTES = (bytes, bytearray, memoryview)
_INT_ARRAY_RANGES = {1007: ("int4", 2**31), 1016: ("int8", 2**63)}
_ARRAY_OIDS = {1009, 1015, *_INT_ARRAY_RANGES}
# Exact Python types binary COPY dumps faithfully as each column type (by oid). Anything
# else (a str for an int column, a naive datetime for timestamptz...) goes as text COPY,
# where the server parses the value exactly as it would in an INSERT.
_BINARY_KINDS: dict[int, frozenset[type]] = {
    21: frozenset({int}),
    23: frozenset({int}),
    20: frozenset({int}),
    700: frozenset({float, int}),
    701: frozenset({float, int}),
    1700: frozenset({decimal.Decimal, int}),
    25: frozenset({str}),
    1043: frozenset({str}),
    16: frozenset({bool}),
    1184: frozenset({datetime.datetime}),
    1114: frozenset({datetime.datetime}),
    1082: frozenset({datetime.date}),
    2950: frozenset({uuid.UUID}),
    17: frozenset({bytes}),
    114: frozenset({dict, list, str, int, float, bool}),
    3802: frozenset({dict, list, str, int, float, bool}),
    1009: frozenset({list}),
    1015: frozenset({list}),
    1007: frozenset({list}),
    1016: frozenset({list}),
}
_TEMP_TABLE = "_leadperf_upsert"


@attrs.frozen
class Column:
    """One column of the target table, as the catalog describes it."""

    name: str
    oid: int
    type_name: str
    not_null: bool


@attrs.frozen
class TableInfo:
    """The target table: its columns by name and the column sets of its usable unique indexes."""

    name: str
    columns: Mapping[str, Column]
    unique_keys: tuple[frozenset[str], ...]


@attrs.frozen
class Statements:
    """Every statement one call runs, composed once."""

    create: sql.Composed
    copy_temp_text: sql.Composed
    copy_temp_binary: sql.Composed
    copy_table_text: sql.Composed
    copy_table_binary: sql.Composed
    merge: sql.Composed
    drop: sql.Composed
    exists: sql.Composed | None


@attrs.define
class UpsertPlan:
    """What :func:`make_plan` decided; the executor only reads it (``binary`` may drop)."""

    table: str
    columns: list[str]
    oids: list[int]
    records: list[tuple[Any, ...]]
    rows: int
    duplicates: int
    key_index: list[int]
    batch_size: int
    binary: bool
    text_wrap: list[int]
    statements: Statements

    @property
    def batches(self) -> list[tuple[int, int]]:
        """``(start, end)`` of each batch, in order."""
        n, size = len(self.records), self.batch_size
        return [(start, min(start + size, n)) for start in range(0, n, size)]


# -- rows -----------------------------------------------------------------------------------


def read_rows(
    data: Sequence[Mapping[str, Any]], keys: tuple[str, ...]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The rows' column names (from row 0) and each row as a tuple in that order.

    Raises ConfigError when a row is not a mapping, has other columns than row 0, or lacks
    a key column.
    """
    first = data[0]
    if not isinstance(first, Mapping):
        raise ConfigError(
            f"rows must be mappings of column to value; row 0 is {type(first).__name__}",
            key="rows",
        )
    columns = list(first.keys())
    for c in columns:
        check_identifier(c, "column")
    absent = [k for k in keys if k not in first]
    if absent:
        raise ConfigError(
            f"key columns {absent} are not in the rows (columns: {columns})", key="key"
        )
    getter = operator.itemgetter(*columns)
    try:
        # Same size and every column present means the same columns: two C-level passes
        # instead of comparing key views row by row.
        if set(map(len, data)) == {len(columns)}:
            records = list(map(getter, data))
            if len(columns) == 1:
                records = [(value,) for value in records]
            return columns, records
    except (KeyError, TypeError):
        pass
    _shape_error(data, columns)
    raise AssertionError("unreachable: _shape_error always raises")


def _shape_error(data: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
    """Raise the ConfigError naming the first row whose columns differ from row 0's."""
    wanted = set(columns)
    for index, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise ConfigError(
                f"rows must be mappings of column to value; row {index} is {type(row).__name__}",
                key="rows",
            )
        have = set(row.keys())
        if have != wanted:
            raise ConfigError(
                f"every row must have the same columns as row 0; row {index} is missing "
                f"{sorted(wanted - have)} and has extra {sorted(have - wanted)}. "
                "Nothing was written",
                key="rows",
            )


# -- the table --------------------------------------------------------------------------------

_COLUMNS_SQL = """
SELECT a.attname, a.atttypid::int, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = %(rel)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# Indexes ON CONFLICT can use as an arbiter: unique, valid, immediate, on plain columns.
_UNIQUE_SQL = """
SELECT array_agg(a.attname::text)
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %(rel)s AND i.indisunique AND i.indisvalid AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""


async def read_table(conn: AsyncConnection[Any], schema: str | None, table: str) -> TableInfo:
    """The target's columns and usable unique indexes, from the catalog.

    Raises BulkUpsertError when the table does not exist. Runs in whatever transaction
    state ``conn`` is in; the caller commits.
    """
    target = qualified(schema, table).as_string(conn)
    cur = await conn.execute("SELECT to_regclass(%s)::oid::int", (target,))
    found = await cur.fetchone()
    if found is None or found[0] is None:
        raise BulkUpsertError(
            f"bulk upsert into {table!r}: relation {target} does not exist, so nothing was "
            "written; create the table (with a unique index on the key) first",
            table=table,
            batch=0,
        )
    rel = {"rel": found[0]}
    cur = await conn.execute(_COLUMNS_SQL, rel)
    columns = {
        name: Column(name, oid, type_name, not_null)
        for name, oid, type_name, not_null in await cur.fetchall()
    }
    cur = await conn.execute(_UNIQUE_SQL, rel)
    uniques = tuple(frozenset(names) for (names,) in await cur.fetchall())
    return TableInfo(name=table, columns=columns, unique_keys=uniques)


def _check_table(info: TableInfo, columns: list[str], keys: tuple[str, ...]) -> None:
    unknown = [c for c in columns if c not in info.columns]
    if unknown:
        raise BulkUpsertError(
            f"bulk upsert into {info.name!r}: column(s) {unknown} do not exist in the table "
            f"(it has {list(info.columns)}), so nothing was written",
            table=info.name,
            batch=0,
        )
    if frozenset(keys) not in info.unique_keys:
        raise BulkUpsertError(
            f"bulk upsert into {info.name!r}: no unique index or constraint covers exactly "
            f"the key {list(keys)} (a non-deferrable, non-partial one on plain columns), so "
            f"nothing was written; create one (ALTER TABLE ... ADD UNIQUE ({', '.join(keys)})) "
            "or pass the key that has one",
            table=info.name,
            batch=0,
        )


# -- values ---------------------------------------------------------------------------------


def _refuse(row: int, column: Column, value: object, why: str) -> RowValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return RowValueError(
        f"row {row}, column {column.name!r} ({column.type_name}): {shown} {why}. "
        "Nothing was written; fix the value and rerun",
        row=row,
        column=column.name,
    )


def _first(values: Sequence[Any], bad: Callable[[Any], bool]) -> int:
    return next(i for i, v in enumerate(values) if bad(v))


def _identity(text: str) -> str:
    return text


def _check_column(column: Column, values: Sequence[Any], kinds: set[type]) -> list[Any] | None:
    """Refuse what ``column`` cannot take exactly; return replaced values, or None if none.

    ``kinds`` is the set of non-None value types in ``values``.
    """
    oid = column.oid
    if any(issubclass(k, _BYTES) for k in kinds) and oid != 17:
        i = _first(values, lambda v: isinstance(v, _BYTES))
        raise _refuse(i, column, values[i], "is bytes; decode it to str first")
    if oid in _NUMBER_OIDS and bool in kinds:
        i = _first(values, lambda v: type(v) is bool)
        raise _refuse(i, column, values[i], "is a bool; pass an int (int(flag)) instead")
    if oid in _INT_RANGES and int in kinds:
        name, bound = _INT_RANGES[oid]
        ints = (
            values
            if kinds == {int} and None not in values
            else [v for v in values if type(v) is int]
        )
        if min(ints) < -bound or max(ints) >= bound:
            i = _first(values, lambda v: type(v) is int and not -bound <= v < bound)
            raise _refuse(i, column, values[i], f"is out of range for {name}")
    if oid in _JSON_OIDS and str in kinds:
        from psycopg.types.json import Json, Jsonb

        wrap = Jsonb if oid == 3802 else Json
        out = list(values)
        for i, v in enumerate(values):
            if type(v) is str:
                try:
                    json.loads(v)
                except ValueError:
                    raise _refuse(
                        i, column, v, "is not valid JSON text; pass the parsed value instead"
                    ) from None
                # Sent as the text itself: the server parses it, as it would in an INSERT.
                out[i] = wrap(v, dumps=_identity)
        return out
    if dict in kinds and oid not in _JSON_OIDS:
        i = _first(values, lambda v: type(v) is dict)
        raise _refuse(i, column, values[i], "is a dict; only json/jsonb columns take one")
    if oid in _ARRAY_OIDS and kinds == {list}:
        _check_array(column, values, _element_kinds(values))
    return None


def _element_kinds(values: Sequence[Any]) -> set[type]:
    """Types of the elements of every list in ``values`` (None aside), one C-level pass."""
    kinds = set(map(type, itertools.chain.from_iterable(filter(None, values))))
    kinds.discard(_NONE)
    return kinds


def _check_array(column: Column, values: Sequence[Any], elements: set[type]) -> None:
    """Refuse arrays no COPY can write as this column: mixed element types, ints out of range."""
    if len(elements) > 1 and list not in elements:
        # Different rows may hold different element types (text COPY then lets the server
        # cast each array); one array mixing them cannot be written at all.
        mixed = (i for i, v in enumerate(values) if v and len(set(map(type, v)) - {_NONE}) > 1)
        i = next(mixed, -1)
        if i >= 0:
            raise _refuse(i, column, values[i], "mixes element types; an array holds one type")
    if column.oid in _INT_ARRAY_RANGES and elements & {int, bool}:
        name, bound = _INT_ARRAY_RANGES[column.oid]
        if bool in elements:
            i = _first(values, lambda v: v and any(type(e) is bool for e in v))
            raise _refuse(i, column, values[i], "holds a bool; pass ints")
        flat = [e for e in itertools.chain.from_iterable(filter(None, values)) if e is not None]
        if min(flat) < -bound or max(flat) >= bound:
            i = _first(
                values, lambda v: v and any(e is not None and not -bound <= e < bound for e in v)
            )
            raise _refuse(i, column, values[i], f"holds an element out of range for {name}")


def _binary_safe(column: Column, values: Sequence[Any], kinds: set[type]) -> bool:
    allowed = _BINARY_KINDS.get(column.oid)
    if allowed is None or not kinds <= allowed:
        return False
    if column.oid in (1184, 1114):
        # A naive datetime follows the session time zone only when the server parses it.
        present = (
            values if _NONE not in set(map(type, values)) else [v for v in values if v is not None]
        )
        zones = set(map(operator.attrgetter("tzinfo"), present))
        return None not in zones if column.oid == 1184 else zones <= {None}
    if column.oid == 1082:
        return datetime.datetime not in kinds
    if column.oid in _ARRAY_OIDS and kinds:
        # The binary array dumpers take 1-D arrays of exactly str (text) or int (integers).
        want = {int} if column.oid in _INT_ARRAY_RANGES else {str}
        return _element_kinds(values) <= want
    return True


def _check_values(
    columns: list[Column], records: list[tuple[Any, ...]]
) -> tuple[list[tuple[Any, ...]], bool]:
    """Validated records (replaced where needed) and whether binary COPY is safe."""
    binary = True
    replaced: dict[int, list[Any]] = {}
    for index, column in enumerate(columns):
        getter = operator.itemgetter(index)
        kinds = set(map(type, map(getter, records)))
        kinds.discard(_NONE)
        safe_text = column.oid in _TEXT_OIDS and kinds <= {str}
        # The common case (text columns holding str) needs no second pass at all.
        values: Sequence[Any] = () if safe_text else list(map(getter, records))
        new = None if safe_text else _check_column(column, values, kinds)
        if new is not None:
            replaced[index] = new
        if safe_text:
            binary = binary and column.oid in _BINARY_KINDS  # psycopg has no binary bpchar
        else:
            binary = binary and _binary_safe(column, values, kinds)
    if replaced:
        for index, new in replaced.items():
            records = [(*r[:index], v, *r[index + 1 :]) for r, v in zip(records, new, strict=True)]
    return records, binary


def _dedupe(
    records: list[tuple[Any, ...]], key_index: list[int], columns: list[Column]
) -> list[tuple[Any, ...]]:
    """The last row of each key, in first-seen order; rows with a NULL key are all kept.

    NULL never equals NULL in a unique index, so such rows never conflict: each one is a
    new row, exactly as the server will treat it.
    """
    key_of = operator.itemgetter(*key_index)
    single = len(key_index) == 1
    for k in key_index:
        if columns[k].not_null:
            values = list(map(operator.itemgetter(k), records))
            if None in values:
                i = values.index(None)
                raise _refuse(i, columns[k], None, "is None, but the key column is NOT NULL")
    try:
        unique = dict(zip(map(key_of, records), records, strict=True))
    except TypeError as exc:
        raise ConfigError(f"key values must be hashable: {exc}", key="key") from None
    has_null = None in unique if single else any(None in k for k in unique)
    if not has_null:
        return records if len(unique) == len(records) else list(unique.values())
    kept = [rec for rec in records if any(rec[k] is None for k in key_index)]
    rest = {key_of(rec): rec for rec in records if all(rec[k] is not None for k in key_index)}
    # (a slow path on purpose: it runs only when some key is NULL)
    return list(rest.values()) + kept


# -- statements -----------------------------------------------------------------------------


def _exists_sql(
    target: sql.Composable, keys: list[Column], records: list[tuple[Any, ...]], key_index: list[int]
) -> sql.Composed | None:
    """``SELECT EXISTS`` of any of a batch's keys in the table, or None if not cheap to ask.

    Keys travel as one JSON array (a C-speed ``json.dumps``), so only str and int keys
    qualify; anything else always takes the merge path.
    """
    from psycopg import sql

    for k in key_index:
        kinds = set(map(type, map(operator.itemgetter(k), records)))
        kinds.discard(_NONE)
        if not (kinds <= {str} or kinds == {int}):
            return None
    if len(keys) == 1:
        return sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {t} WHERE {k} = ANY "
            "(ARRAY(SELECT jsonb_array_elements_text(%s::jsonb))::{type}[]))"
        ).format(t=target, k=sql.Identifier(keys[0].name), type=sql.SQL(keys[0].type_name))
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{} = (k.v->>{})::{}").format(
            sql.Identifier(c.name), sql.Literal(i), sql.SQL(c.type_name)
        )
        for i, c in enumerate(keys)
    )
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM jsonb_array_elements(%s::jsonb) AS k(v) JOIN {t} AS t ON {m})"
    ).format(t=target, m=match)


def _statements(
    target: sql.Composable,
    columns: list[str],
    keys: tuple[str, ...],
    skip_unchanged: bool,
    exists: sql.Composed | None,
) -> Statements:
    from psycopg import sql

    temp = sql.Identifier(_TEMP_TABLE)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    update = [c for c in columns if c not in keys] or [keys[0]]
    where: sql.Composable = sql.SQL("")
    if skip_unchanged:
        where = sql.SQL(" WHERE ROW({}) IS DISTINCT FROM ROW({})").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in update),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in update),
        )
    merge = sql.SQL(
        "WITH merged AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {temp} "
        "ON CONFLICT ({keys}) DO UPDATE SET {sets}{where} RETURNING (t.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FROM merged"
    ).format(
        target=target,
        cols=cols,
        temp=temp,
        keys=sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        sets=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in update
        ),
        where=where,
    )
    return Statements(
        # Only the rows' columns, with the target's types and no constraints: absent NOT
        # NULL columns must not fail the load, the merge applies the real rules.
        create=sql.SQL(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
        ).format(temp, cols, target),
        copy_temp_text=sql.SQL("COPY {} ({}) FROM STDIN").format(temp, cols),
        copy_temp_binary=sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(temp, cols),
        copy_table_text=sql.SQL("COPY {} ({}) FROM STDIN").format(target, cols),
        copy_table_binary=sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, cols),
        merge=merge,
        drop=sql.SQL("DROP TABLE {}").format(temp),
        exists=exists,
    )


def make_plan(
    info: TableInfo,
    schema: str | None,
    data: Sequence[Mapping[str, Any]],
    keys: tuple[str, ...],
    *,
    batch_size: int,
    skip_unchanged: bool = False,
) -> UpsertPlan:
    """Check ``data`` against ``info`` and decide everything the batches will do.

    Raises ConfigError for a row or value the table cannot take (naming row and column)
    and BulkUpsertError for a column the table lacks or a key without a unique index.
    Nothing touches the database.
    """
    with _gc_paused():
        return _make_plan(info, schema, data, keys, batch_size, skip_unchanged)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Building one tuple per row allocates 100,000s of containers, and each allocation
    # burst sets off the cyclic collector, which then walks every live row dict: measured,
    # that tripled the time to build the records. The tuples hold no cycles, so pausing
    # automatic collection for these few milliseconds loses nothing (and a host that
    # disabled it keeps it disabled).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _make_plan(
    info: TableInfo,
    schema: str | None,
    data: Sequence[Mapping[str, Any]],
    keys: tuple[str, ...],
    batch_size: int,
    skip_unchanged: bool,
) -> UpsertPlan:
    names, records = read_rows(data, keys)
    _check_table(info, names, keys)
    columns = [info.columns[n] for n in names]
    records, binary = _check_values(columns, records)
    key_index = [names.index(k) for k in keys]
    unique = _dedupe(records, key_index, columns)
    target = qualified(schema, info.name)
    exists = _exists_sql(target, [columns[i] for i in key_index], unique, key_index)
    return UpsertPlan(
        table=info.name,
        columns=names,
        oids=[c.oid for c in columns],
        records=unique,
        rows=len(records),
        duplicates=len(records) - len(unique),
        key_index=key_index,
        batch_size=batch_size,
        binary=binary,
        text_wrap=[i for i, c in enumerate(columns) if c.oid in _JSON_OIDS],
        statements=_statements(target, names, keys, skip_unchanged, exists),
    )
