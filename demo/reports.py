"""The reports a user can run from the demo page: fixed SQL over ``demo_sale``.

Users pick a report by key; they never send SQL. Each report aggregates the table one group at a
time (a LATERAL subquery per group) and calls ``pgbackground_progress()`` after each group, so
the page's progress bar moves while the job runs. ``pg_sleep`` paces the steps so that a person
can watch; a real report would not need it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

REGIONS = ("Andes", "Baltic", "Caribbean", "Danube", "Egypt", "Fjords", "Gobi", "Highlands")
PRODUCTS = (
    "anchor", "barometer", "compass", "dinghy", "engine", "flare",
    "galley stove", "hammock", "inflatable", "jib", "keel", "lantern",
)

# Seconds each step sleeps (a demo pace, not a property of the query).
STEP_PACE = 0.4


@dataclass(frozen=True)
class Report:
    key: str
    title: str | Promise
    description: str | Promise
    sql: str


def _stepped(key_expr: str, key_name: str, step_noun: str, pace: float = STEP_PACE) -> str:
    """SQL aggregating demo_sale one ``key_expr`` group at a time, reporting progress per group."""
    return f"""
SELECT step.key AS {key_name}, agg.orders, agg.units, agg.revenue
FROM (
    SELECT key, row_number() OVER (ORDER BY key) AS n, count(*) OVER () AS total
    FROM (SELECT DISTINCT {key_expr} AS key FROM demo_sale) AS keys
) AS step
CROSS JOIN LATERAL (
    SELECT count(*) AS orders, sum(quantity) AS units, sum(amount) AS revenue
    FROM demo_sale WHERE {key_expr} = step.key
) AS agg
CROSS JOIN LATERAL (
    SELECT pgbackground_progress(
               100.0 * step.n / step.total,
               format('{step_noun} %s of %s: %s (%s orders)', step.n, step.total, step.key,
                      agg.orders)),
           pg_sleep({pace:g})
) AS report_progress
ORDER BY step.n
""".strip()


REPORTS: dict[str, Report] = {
    r.key: r
    for r in (
        Report(
            "regions",
            _("Sales by region"),
            _("Orders, units and revenue of each region, one region at a time."),
            _stepped("region", "region", "region"),
        ),
        Report(
            "months",
            _("Revenue by month"),
            _("Orders, units and revenue of each month of 2025."),
            _stepped("to_char(sold_on, 'YYYY-MM')", "month", "month", STEP_PACE / 2),
        ),
        Report(
            "products",
            _("Sales by product"),
            _("Orders, units and revenue of each product."),
            _stepped("product", "product", "product", STEP_PACE / 2),
        ),
    )
}
