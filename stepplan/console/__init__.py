"""The web console at ``/console`` (docs/console.md): server-rendered pages for key holders
(plan, Credit buckets, usage, calls, keys, set-up) and operators (accounts, keys, ledger,
health). Its routes are ordinary Starlette routes: the model-call hot path never sees them."""
