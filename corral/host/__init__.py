"""What a host worker runs: the coordinator around the adapter, the effect protocol (journal +
idempotency), the host policy, secrets and redaction, the reconciler, the ticket sweeper, the batch
dispatcher, views, metrics. Never imported by the client.
"""
