"""Every Redis key of corral's state and the atomic transitions on it (the store), and the journal.
Used by clients and hosts alike.
"""
