"""The isolation runtime contract, as the seed states it: its types (upstream serde JSON on the wire),
the ``Operation`` enum and chain order, the session state machine, errors, refs and pure capability
matching. Runs in every process; imports nothing of corral but itself (import-linter).
"""
