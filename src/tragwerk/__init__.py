"""tragwerk: the load-bearing structure of a case-management platform."""

__version__ = "0.1.0"
