"""Outbound calls: a circuit breaker per destination and a guard against requests to
internal addresses (SSRF)."""
