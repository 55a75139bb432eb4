"""Component 6 of the specification: every module reports state, duration and errors.

The convention, established here and followed by every later module:

- `tragwerk_module_up{module}`                         1 while the module works, 0 when failing
- `tragwerk_module_operation_seconds{module,operation}` histogram of each operation's duration
- `tragwerk_module_errors_total{module,operation}`      operations that raised

A module receives a `ModuleReporter` (tragwerk.domain.observability) from the
composition root and calls `operation(name)` around its work.
"""
