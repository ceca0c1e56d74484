"""The docs keep up with the code: every public name is documented, every doc is linked."""

from __future__ import annotations

import re
from pathlib import Path

import pgbackground

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("quickstart", "api", "operations", "migrating-from-pg_background", "limits")


def test_api_reference_covers_every_public_name() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    # A section of its own, or (exceptions) a row of the exceptions table.
    titles = " ".join(re.findall(r"^## (.+)$", api, re.M) + re.findall(r"^\| `(\w+)", api, re.M))
    missing = [n for n in pgbackground.__all__ if not re.search(rf"\b{n}\b", titles)]
    assert not missing, f"docs/api.md has no section for {missing}"


def test_api_reference_lists_every_exception_with_its_sqlstate() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    for name in pgbackground.__all__:
        obj = getattr(pgbackground, name)
        if isinstance(obj, type) and issubclass(obj, pgbackground.BackgroundError):
            rows = [line for line in api.splitlines() if re.match(rf"\| `{name}[`(]", line)]
            row = rows[0] if rows else ""
            assert row, f"{name} is not in the exceptions table"
            if obj.sqlstate:
                assert f"`{obj.sqlstate}`" in row, f"{name}: SQLSTATE {obj.sqlstate} not stated"
    assert "`57014`" in api and "`08006`" in api


def test_every_doc_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS:
        assert (ROOT / "docs" / f"{doc}.md").exists()
        assert f"(docs/{doc}.md)" in readme, f"README does not link docs/{doc}.md"


def test_relative_links_in_the_docs_resolve() -> None:
    for doc in DOCS:
        text = (ROOT / "docs" / f"{doc}.md").read_text()
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
            assert (ROOT / "docs" / target).exists(), f"docs/{doc}.md links {target}"


def test_documented_setting_keys_exist() -> None:
    from pgbackground.conf import DEFAULTS

    for doc in DOCS:
        text = (ROOT / "docs" / f"{doc}.md").read_text()
        for key in re.findall(r'PGBACKGROUND\["([A-Z_]+)"\]', text):
            assert key in DEFAULTS, f"docs/{doc}.md names unknown setting {key}"
