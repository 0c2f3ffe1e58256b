"""call-ledger's core: the normalised call event, the ledger's rules, and the Redis layout.

`worker` (intake + apply) and `api` (read) both stand on this package; nothing here
knows about HTTP routes or a particular provider.
"""
