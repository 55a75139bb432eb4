"""Component 4 of the specification: every request is checked for frequency.

Tiers (anonymous by client IP, external and internal by token) each have a limit;
routes have a cost. Budgets live in process memory, or in Redis so that every
instance shares one — reserved in batches, so the hot path seldom waits for Redis
(docs/decisions/0005). Built on the `limits` library's sliding-window counter.
"""
