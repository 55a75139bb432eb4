"""The HTTP entrypoint: app, routes, dependencies and the mapping of errors to problems."""
