"""The per-sandbox I/O helper (the shim), its spool format and cgroup placement. Standard library only:
it starts once per sandbox, so its imports are the product's cost (import-linter ``forbidden``).
"""
