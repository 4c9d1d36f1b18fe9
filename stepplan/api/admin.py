"""Routes filled in by the admin work."""

ROUTES: list = []
