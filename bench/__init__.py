"""Benchmark harness: the same HA scenarios run against pgwarden and Patroni, side by side."""
