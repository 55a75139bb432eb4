"""Component 1 of the specification: reference data and token lookups served from memory.

Cache first, database on a miss; entries are dropped when the database says their
rows changed (`tragwerk.store.changes` listens for the triggers' NOTIFY), with a TTL
as a backstop. Standard library only: loaders and the change feed are passed in.
"""
