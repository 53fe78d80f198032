"""Worker: JetStream durable consumers (transcripts, usage, webhooks) and the scheduler."""
