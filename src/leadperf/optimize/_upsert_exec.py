"""Executing a bulk upsert plan: COPY, merge, commit, and report exactly what was committed.

Each batch runs in one real transaction of its own (``atomic=False``) or every batch in
one (``atomic=True``): the connection is idle when a batch starts, the batch's first
statement opens the transaction and records its id (``txid_current()``), and ``COMMIT``
ends it. When the connection dies during ``COMMIT`` the client cannot know whether the
server committed, so the executor asks the server (``txid_status``) on another connection;
the report never counts a batch the table does not hold, nor misses one it does.

Inside a batch, keys that look all new (an ``EXISTS`` probe of a sample of them over the
unique index) are COPYed straight into the table, in a savepoint; if one of them exists
after all (the sample missed it, or a concurrent writer added it), the unique index
refuses the COPY, the savepoint rolls back, and the batch takes the general path: COPY
into a temporary table and ``INSERT ... ON CONFLICT DO UPDATE``.
"""

from __future__ import annotations

import functools
import json
import operator
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ..errors import BulkUpsertError, DatabaseUnavailableError
from ._pg_pool import PoolOptions, bounded, describe

if TYPE_CHECKING:
    from psycopg import AsyncConnection, sql

    from ._upsert_plan import UpsertPlan

__all__ = ["BatchCounts", "BatchFailed", "Executor", "Outcome", "upsert_error"]

# What a value binary COPY cannot dump as its column's type raises; text COPY then lets
# the server parse it instead.
DUMP_ERRORS = (TypeError, ValueError, AttributeError, OverflowError, struct.error)
# Keys probed per batch before trying a direct COPY (see Executor._looks_new).
PROBE_SAMPLE = 64
Borrow = Callable[[], AbstractAsyncContextManager["AsyncConnection[Any]"]]


@attrs.frozen
class BatchCounts:
    """What one committed batch did."""

    rows: int
    inserted: int
    updated: int
    unchanged: int


class BatchFailed(Exception):
    """Batch ``index`` (rows ``start``..``end - 1``) was not committed (or, ``unknown``,
    may have been: the server could not be asked)."""

    def __init__(self, index: int, start: int, end: int, reason: str, *, unknown: bool = False):
        super().__init__(reason)
        self.index, self.start, self.end, self.reason = index, start, end, reason
        self.unknown = unknown


@attrs.define
class Outcome:
    """What the batches of one call did: committed ones by index, and the failures."""

    done: dict[int, BatchCounts] = attrs.Factory(dict)
    failed: list[BatchFailed] = attrs.Factory(list)
    xids: dict[int, int] = attrs.Factory(dict)

    def total(self, field: str) -> int:
        """Sum of one :class:`BatchCounts` field over the committed batches."""
        get = operator.attrgetter(field)
        return sum(get(c) for c in self.done.values())


@functools.cache
def _fast_dumpers() -> list[type]:
    from ._pg_dumpers import array_dumpers

    return list(array_dumpers())


def _text_row(
    rec: tuple[Any, ...], wrap: Sequence[tuple[int, type]], wrapped: tuple[type, ...]
) -> tuple[Any, ...]:
    # psycopg adapts no dict by itself, and True would go as "t": wrap every JSON value
    # not wrapped already (JSON text from the plan is).
    values = list(rec)
    for i, kind in wrap:
        v = values[i]
        if v is not None and not isinstance(v, wrapped):
            values[i] = kind(v)
    return tuple(values)


class Executor:
    """Runs one :class:`UpsertPlan` over pooled connections (see the module docstring).

    ``borrow()`` lends a pooled connection; ``opts.deadline`` bounds one statement's answer
    on the client side (seconds).
    """

    def __init__(
        self, plan: UpsertPlan, psycopg: ModuleType, borrow: Borrow, opts: PoolOptions
    ) -> None:
        from psycopg.types.json import Json, Jsonb

        self.plan = plan
        self.psycopg = psycopg
        self.borrow = borrow
        self.opts = opts
        self.deadline = opts.deadline
        self.secrets = opts.secrets
        self.outcome = Outcome()
        self._pending = iter(enumerate(plan.batches))
        self._wrap = [(i, Jsonb if plan.oids[i] == 3802 else Json) for i in plan.text_wrap]
        self._wrapped: tuple[type, ...] = (Json, Jsonb)

    # -- the call -------------------------------------------------------------------------

    async def run(self, *, atomic: bool, workers: int) -> Outcome:
        """Run every batch; failures are collected in the outcome, never raised here."""
        if atomic:
            await self._atomic()
        else:
            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(self._worker)
        return self.outcome

    async def _worker(self) -> None:
        # Each worker takes the next batch when it is free; keys were deduplicated, so no
        # two batches touch the same row and none waits for another's locks.
        try:
            async with self.borrow() as conn:
                for index, _span in self._pending:
                    if self.outcome.failed:
                        return
                    try:
                        self.outcome.done[index] = await self._own_transaction(conn, index)
                    except BatchFailed as exc:
                        self.outcome.failed.append(exc)
                        return
        except (self.psycopg.Error, DatabaseUnavailableError) as exc:
            index, (start, end) = next(self._pending, (-1, (0, 0)))
            if index >= 0:
                self.outcome.failed.append(
                    BatchFailed(index, start, end, describe(exc, self.secrets))
                )

    async def _own_transaction(self, conn: AsyncConnection[Any], index: int) -> BatchCounts:
        start, end = self.plan.batches[index]
        what = f"bulk upsert batch {index}"
        committing = False
        try:
            async with bounded(conn, self.deadline * 2, what):
                self.outcome.xids[index] = await self._xid(conn)
                counts = await self._write(conn, start, end)
            committing = True
            async with bounded(conn, self.deadline, what):
                await conn.commit()
            return counts
        except (self.psycopg.Error, DatabaseUnavailableError, *DUMP_ERRORS) as exc:
            reason = _reason(exc, self.secrets, committing=committing)
            if committing and conn.closed and index in self.outcome.xids:
                status = await self._status(self.outcome.xids[index])
                if status == "committed":
                    return counts
                if status is None:
                    raise BatchFailed(index, start, end, reason, unknown=True) from exc
            await self._rollback(conn)
            raise BatchFailed(index, start, end, reason) from exc

    async def _atomic(self) -> None:
        counts: dict[int, BatchCounts] = {}
        async with self.borrow() as conn:
            current = 0
            committing = False
            try:
                async with bounded(conn, self.deadline, "bulk upsert"):
                    self.outcome.xids[0] = await self._xid(conn)
                for current, (start, end) in enumerate(self.plan.batches):
                    async with bounded(conn, self.deadline * 2, f"bulk upsert batch {current}"):
                        counts[current] = await self._write(conn, start, end)
                committing = True
                async with bounded(conn, self.deadline, "bulk upsert commit"):
                    await conn.commit()
            except (self.psycopg.Error, DatabaseUnavailableError, *DUMP_ERRORS) as exc:
                reason = _reason(exc, self.secrets, committing=committing)
                start, end = self.plan.batches[current]
                if committing and conn.closed and 0 in self.outcome.xids:
                    status = await self._status(self.outcome.xids[0])
                    if status == "committed":
                        self.outcome.done.update(counts)
                        return
                    if status is None:
                        self.outcome.failed.append(
                            BatchFailed(current, start, end, reason, unknown=True)
                        )
                        return
                await self._rollback(conn)
                failed = BatchFailed(current, start, end, reason)
                failed.__cause__ = exc
                self.outcome.failed.append(failed)
                return
        self.outcome.done.update(counts)

    async def _xid(self, conn: AsyncConnection[Any]) -> int:
        # The connection is idle, so this opens the batch's own transaction (never a
        # savepoint inside someone else's) and names it for txid_status() later.
        cur = await conn.execute("SELECT txid_current()")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def _status(self, xid: int) -> str | None:
        """'committed', 'aborted' or 'in progress' for ``xid``; None if it cannot be learned.

        On a connection of its own, not a pooled one: the caller may still hold the pool's
        only connection.
        """
        try:
            with anyio.fail_after(self.opts.connect_timeout + self.deadline):
                other = await self.psycopg.AsyncConnection.connect(
                    self.opts.dsn, connect_timeout=self.opts.connect_timeout, autocommit=True
                )
                async with other:
                    cur = await other.execute("SELECT txid_status(%s)", (xid,))
                    row = await cur.fetchone()
        except (self.psycopg.Error, OSError, TimeoutError):
            return None
        return None if row is None or row[0] is None else str(row[0])

    async def _rollback(self, conn: AsyncConnection[Any]) -> None:
        if conn.closed:
            return
        try:
            with anyio.move_on_after(self.deadline):
                await conn.rollback()
        except self.psycopg.Error:
            pass  # a broken connection is discarded by the pool on return

    # -- one batch, inside a transaction ----------------------------------------------------

    async def _write(self, conn: AsyncConnection[Any], start: int, end: int) -> BatchCounts:
        st = self.plan.statements
        batch = self.plan.records[start:end]
        if st.exists is not None and await self._looks_new(conn, st.exists, batch):
            try:
                async with conn.transaction():  # a savepoint: a lost race undoes only this
                    await self._copy(conn, st.copy_table_binary, st.copy_table_text, batch)
                return BatchCounts(len(batch), len(batch), 0, 0)
            except self.psycopg.errors.UniqueViolation:
                pass  # another writer added one of these keys since the probe
        async with conn.cursor() as cur:
            await cur.execute(st.create)
        await self._copy(conn, st.copy_temp_binary, st.copy_temp_text, batch)
        async with conn.cursor() as cur:
            await cur.execute(st.merge)
            row = await cur.fetchone()
            await cur.execute(st.drop)
        assert row is not None
        inserted, total = int(row[0]), int(row[1])
        return BatchCounts(len(batch), inserted, total - inserted, len(batch) - total)

    async def _looks_new(
        self, conn: AsyncConnection[Any], exists: sql.Composed, batch: list[tuple[Any, ...]]
    ) -> bool:
        """Whether none of an evenly spread sample of the batch's keys is in the table.

        A sample, not every key: probing 25,000 keys cost about a tenth of the batch's
        whole time. A wrong guess is still correct, only slower: the direct COPY then hits
        the unique index, its savepoint rolls back, and the batch is merged.
        """
        step = max(1, len(batch) // PROBE_SAMPLE)
        keys = list(map(operator.itemgetter(*self.plan.key_index), batch[::step]))
        try:
            payload = json.dumps(keys)
            async with conn.transaction():  # a savepoint: a failed probe only means "merge"
                cur = await conn.execute(exists, (payload,))
                row = await cur.fetchone()
        except (ValueError, TypeError, self.psycopg.DataError, self.psycopg.ProgrammingError):
            return False
        return row is not None and not row[0]

    async def _copy(
        self,
        conn: AsyncConnection[Any],
        binary_sql: sql.Composed,
        text_sql: sql.Composed,
        batch: list[tuple[Any, ...]],
    ) -> None:
        if self.plan.binary:
            try:
                async with conn.transaction():  # a savepoint, so the text retry is clean
                    await self._copy_once(conn, binary_sql, batch, binary=True)
                return
            except DUMP_ERRORS:
                # A value binary COPY cannot dump as the column's type (an array element of
                # another type, say): text COPY for this batch and the next ones.
                self.plan.binary = False
        await self._copy_once(conn, text_sql, batch, binary=False)

    async def _copy_once(
        self,
        conn: AsyncConnection[Any],
        statement: sql.Composed,
        batch: list[tuple[Any, ...]],
        *,
        binary: bool,
    ) -> None:
        async with conn.cursor() as cur:
            if binary:
                for dumper in _fast_dumpers():
                    # On this cursor's own adapters map: the pooled connection's stay untouched.
                    cur.adapters.register_dumper(None, dumper)
                async with cur.copy(statement) as copy:
                    copy.set_types(self.plan.oids)
                    for rec in batch:
                        await copy.write_row(rec)
            else:
                wrap, wrapped = self._wrap, self._wrapped
                async with cur.copy(statement) as copy:
                    for rec in batch:
                        await copy.write_row(_text_row(rec, wrap, wrapped) if wrap else rec)


def _reason(exc: BaseException, secrets: tuple[str, ...], *, committing: bool) -> str:
    text = describe(exc, secrets)
    # Deferred constraints are checked at COMMIT: say so, or the batch looks innocent.
    return f"at COMMIT: {text}" if committing else text


def _ranges(indexes: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for i in indexes:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def upsert_error(plan: UpsertPlan, outcome: Outcome, *, atomic: bool) -> BulkUpsertError:
    """The error for a call with a failed batch, saying exactly what stays written."""
    first = min(outcome.failed, key=lambda f: f.index)
    rows = outcome.total("rows")
    if atomic and not outcome.done:
        kept = "the call ran in one transaction (atomic=True), so nothing was written"
    elif outcome.done:
        kept = (
            f"batches {_ranges(sorted(outcome.done))} ({rows} rows) were committed and stay "
            "written; rerunning the call is safe (upserts are idempotent)"
        )
    else:
        kept = "no batch was committed"
    unknown = [f.index for f in outcome.failed if f.unknown]
    if unknown:
        kept += (
            f"; whether batches {_ranges(sorted(unknown))} were committed is unknown (the "
            "connection died during COMMIT and the server could not be asked); rerun the call"
        )
    error = BulkUpsertError(
        f"bulk upsert into {plan.table!r} failed in batch {first.index} "
        f"(rows {first.start}-{first.end - 1} after removing duplicate keys), which was "
        f"rolled back whole: {first.reason}; {kept}",
        table=plan.table,
        batch=first.index,
    )
    error.__cause__ = first.__cause__
    return error
