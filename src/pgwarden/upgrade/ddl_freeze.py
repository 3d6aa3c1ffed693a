"""DDL frozen during a cutover: an event trigger on both primaries refuses every DDL command with
a clear message, except in the upgrade's own sessions (which create and drop the replication),
marked by a session setting. Idempotent both ways, so a rerun after a kill releases it."""

from __future__ import annotations

from pgwarden.upgrade import replicate as R

TRIGGER = "pgwarden_upgrade_ddl_freeze"
FUNCTION = f"public.{TRIGGER}"
SESSION_FLAG = "pgwarden.upgrade_session"
MESSAGE = ("DDL is frozen while pgwarden switches this cluster over (a major-version upgrade); "
           "retry in a moment")


def mark_session(conn: R.Conn) -> None:
    """This session's DDL passes the freeze."""
    conn.execute(f"SET {SESSION_FLAG} = 'on'")


def freeze(conn: R.Conn) -> None:
    mark_session(conn)
    conn.execute(f"""CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('{SESSION_FLAG}', true) IS DISTINCT FROM 'on' THEN
    RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$""")
    if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", (TRIGGER,)).fetchone() is None:
        conn.execute(f"CREATE EVENT TRIGGER {TRIGGER} ON ddl_command_start EXECUTE FUNCTION {FUNCTION}()")


def release(conn: R.Conn) -> None:
    mark_session(conn)
    conn.execute(f"DROP EVENT TRIGGER IF EXISTS {TRIGGER}")
    conn.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
