"""``manage.py seed_demo [--rows N]``: fill the demo's sales table with generated rows.

The rows are computed by PostgreSQL from their number alone (no randomness), so every seeding
gives the same table and the reports the same answers. The table is emptied first.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

from demo.reports import PRODUCTS, REGIONS

_SEED_SQL = """
INSERT INTO demo_sale (region, product, sold_on, quantity, amount)
SELECT r.regions[1 + i %% cardinality(r.regions)],
       p.products[1 + (i * 7919) %% cardinality(p.products)],
       date '2025-01-01' + ((i * 13) %% 365),
       1 + (i * 31) %% 9,
       (1 + (i * 31) %% 9) * (5 + (i * 7919) %% cardinality(p.products) * 2.5)
FROM generate_series(1, %(rows)s) AS i,
     (SELECT %(regions)s::text[] AS regions) r,
     (SELECT %(products)s::text[] AS products) p
"""


class Command(BaseCommand):
    help = "Fill the demo's sales table (demo_sale) with generated rows for the report pages."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rows", type=int, default=200_000, help="number of sales (default 200000)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = options["rows"]
        if rows < 0:
            self.stderr.write("--rows must not be negative")
            raise SystemExit(2)
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("TRUNCATE demo_sale RESTART IDENTITY")
            cur.execute(
                _SEED_SQL, {"rows": rows, "regions": list(REGIONS), "products": list(PRODUCTS)}
            )
            cur.execute("ANALYZE demo_sale")
        self.stdout.write(f"demo_sale seeded with {rows} sales")
