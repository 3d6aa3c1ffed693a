"""Cluster drivers: one per HA tool, all behind the ClusterDriver protocol in base.py."""
