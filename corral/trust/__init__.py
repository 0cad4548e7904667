"""Who is who: caller identities, signed task messages, and a fleet's credentials (Redis ACL users,
signing identities). Used by every process that talks to the broker.
"""
