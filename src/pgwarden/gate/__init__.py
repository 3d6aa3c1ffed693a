"""The logical gate: holds back what a logical walsender sends until the source's synchronous
standbys have it (PostgreSQL 15 and 16; docs/logical-replication.md)."""
