"""The control room: `orchestrator web`, a local, authenticated page and JSON API to watch and drive the agents.

The web stack (Starlette, uvicorn, sse-starlette) and the page's templates live here and nowhere else.

    auth       tokens (STATE/web/tokens.json, 0600), sessions, CSRF tokens, roles, the login rate limit
    cards      pure: a status row as a card (its color), the confirmation of an action from the dependency graph
    board      what the page shows, kept fresh by one thread: supervisord's processes, status rows, a ring of
               CPU and memory samples, and the stream of events pushed to every page (with ids, for resuming)
    desk       the actions: one at a time, through the operations the command line uses, each in the audit log
    app        the Starlette application: routes, security headers, the Origin and CSRF checks; `serve`

Called by interfaces.commands.web.
"""
