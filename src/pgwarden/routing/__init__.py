"""Routing clients to the right member: HAProxy configuration and PgBouncer retargeting."""
