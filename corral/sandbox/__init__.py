"""What a host allows a sandbox and how it protects one, as data and pure functions: the host policy,
user resolution, secret providers and redaction. Shared by the host's coordinator and the runtime
adapters, below both (import-linter layers); runs only on hosts.
"""
