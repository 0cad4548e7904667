"""The Docker adapter, one concern a module: ``runtime`` (the 16 operations), ``environment``
(container create), ``mounts`` (pinned sources), ``process`` (start, signal, the shim), ``resources``
(lookup by label), ``capabilities``, ``policy`` (host-policy translation), ``failure`` (engine errors).
"""
