"""Fleet-wide decisions shared by clients and fleet-queue tasks: admission (one Lua reservation per
placement), placement (filter → score → reserve) and batches held in Redis. Never imports host code, so
a client may use it.
"""
