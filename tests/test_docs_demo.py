"""docs/demo.md quotes the demo's views: each of its Python blocks must be the code as it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_walkthrough_quotes_the_views_verbatim() -> None:
    doc = (ROOT / "docs" / "demo.md").read_text()
    views = (ROOT / "demo" / "views.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        assert block in views, f"docs/demo.md quotes code demo/views.py no longer has:\n{block}"
    assert "pgb.launch(report.sql, label=f\"demo: {report.title}\", owner=request.user)" in doc
