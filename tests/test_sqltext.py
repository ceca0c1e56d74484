"""The job-SQL lexer that finds client-side COPY before anything runs."""

import pytest

from pgbackground.sqltext import client_copy, is_blank, statements


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("COPY t FROM STDIN", "FROM STDIN"),
        ("copy t (a, b) from stdin with (format csv)", "FROM STDIN"),
        ("SELECT 1; COPY (SELECT 'stdin') TO STDOUT", "TO STDOUT"),
        ("copy\nt\nto\nstdout", "TO STDOUT"),
        ("/* c */ COPY t TO STDOUT", "TO STDOUT"),
        ("COPY t TO '/tmp/file'", None),
        ("COPY t FROM PROGRAM 'cat stdin'", None),
        ("COPY (SELECT stdout FROM t) TO '/f'", None),
        ("SELECT 'COPY t FROM STDIN'", None),
        ("SELECT $$ ; COPY t FROM STDIN $$", None),
        ("SELECT $tag$ ; COPY t FROM STDIN $tag$", None),
        ('SELECT "copy" FROM stdin', None),
        ("-- COPY t FROM STDIN\nSELECT 1", None),
        ("/* nested /* COPY t FROM STDIN */ still comment */ SELECT 1", None),
        ("SELECT E'\\' ; COPY t FROM STDIN'", None),
        ("SELECT 'it''s'; COPY t FROM STDIN", "FROM STDIN"),
    ],
)
def test_client_copy(sql, expected):
    assert client_copy(sql) == expected


def test_statements_and_blank():
    assert statements("SELECT 1; ; SELECT 2;") == [["SELECT", "?"], ["SELECT", "?"]]
    assert is_blank(" ;\n-- x\n/* y */")
    assert not is_blank("SELECT")
    assert is_blank("")
