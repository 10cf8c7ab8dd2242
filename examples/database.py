"""DatabaseOptimizer: COPY-based bulk upserts and pool stats.

Run: DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python3 examples/database.py
"""

from __future__ import annotations

import os
import uuid

import anyio

from leadperf.optimize import DatabaseOptimizer


async def main() -> None:
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    table = f"example_leads_{uuid.uuid4().hex[:8]}"
    async with DatabaseOptimizer(url) as db:
        await db.execute(f"CREATE TABLE {table} (email text PRIMARY KEY, score int)")
        try:
            rows = [{"email": f"lead{i}@example.com", "score": i} for i in range(10_000)]
            first = await db.bulk_upsert(table, rows, key=("email",))
            rows = [{"email": f"lead{i}@example.com", "score": i + 1} for i in range(500)]
            second = await db.bulk_upsert(table, rows, key=("email",))
            print(f"inserted {first.inserted} at {first.rows_per_second:,.0f} rows/s;")
            print(f"then updated {second.updated}")
            print(await db.fetch(f"SELECT count(*) AS n, max(score) AS top FROM {table}"))
        finally:
            await db.execute(f"DROP TABLE {table}")
        print(db.stats())


if __name__ == "__main__":
    anyio.run(main)
