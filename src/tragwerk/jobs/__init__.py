"""Asynchronous processing: the worker that turns case events into notifications,
emails and webhook deliveries, with retries, held jobs and the SLA monitor."""
