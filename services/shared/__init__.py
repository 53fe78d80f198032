"""What every service shares: settings, structured logging, metrics, the gRPC server helper and
clients for PostgreSQL, Redis and NATS JetStream."""
