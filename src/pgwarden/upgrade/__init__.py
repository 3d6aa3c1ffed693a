"""`pgwarden local upgrade`: an online major-version upgrade of a local cluster by logical
replication to a new cluster behind the same PgBouncer (docs/upgrade.md)."""
