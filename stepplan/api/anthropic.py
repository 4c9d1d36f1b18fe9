"""Routes filled in by the anthropic work."""

ROUTES: list = []
