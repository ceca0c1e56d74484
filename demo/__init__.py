"""Demo project that hosts the pgbackground app (used by ``manage.py`` and the tests)."""
