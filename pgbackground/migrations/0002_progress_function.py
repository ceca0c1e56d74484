"""The SQL function job SQL calls to report progress: pgbackground_progress(pct, message).

It raises a NOTICE with SQLSTATE PGBPR that the worker intercepts as the statement runs (notices
reach the client immediately, not at commit), so progress is visible while the job is running
and needs no privilege on pgbackground's tables. ``SET client_min_messages`` on the function
makes it work whatever the job set client_min_messages to.
"""

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION pgbackground_progress(pct double precision, message text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET client_min_messages = notice
AS $$
BEGIN
    IF pct = 'NaN'::double precision THEN
        RAISE EXCEPTION 'pgbackground_progress: pct must be a number, not NaN'
            USING ERRCODE = '22023';
    END IF;
    -- pct is clamped to 0..100; the message is cut to 500 characters (not bytes).
    RAISE NOTICE USING
        MESSAGE = coalesce(left(message, 500), ''),
        DETAIL = coalesce(greatest(0, least(100, pct))::text, ''),
        ERRCODE = 'PGBPR';
END
$$;
COMMENT ON FUNCTION pgbackground_progress(double precision, text) IS
    'Report a pgbackground job''s progress: pct (clamped to 0..100, NULL keeps the last) and a message (cut to 500 characters).';
"""

DROP = "DROP FUNCTION IF EXISTS pgbackground_progress(double precision, text);"


class Migration(migrations.Migration):
    dependencies = [("pgbackground", "0001_initial")]

    operations = [migrations.RunSQL(CREATE, DROP)]
