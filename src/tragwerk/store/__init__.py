"""Component 2 of the specification: tables, indexes, migrations and the hot queries.

Every hot query lives in `tragwerk.store.queries`, names the index it relies on, and
has a test that reads its plan.
"""
