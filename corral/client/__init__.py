"""What schedulers and people run: the Python ``Client``, job specs, the ``corral`` CLI and its
rendering, ``corral dev``. Never imports host, runtime or I/O-helper code (import-linter ``forbidden``).
"""
