"""A simulated world for the failover scenarios: simulated PostgreSQL servers and fencers behind
the executor's ports, the in-memory store on a simulated clock, and the real agent pieces
(`core.decide`, `agent.executor.Executor`, `agent.lease.LeaseKeeper`, `store.cluster.ClusterStore`)
run as they run in production."""
