"""Control plane: the system of record on PostgreSQL, served over gRPC (and REST via the gateway)."""
