"""Routes filled in by the usage work."""

ROUTES: list = []
