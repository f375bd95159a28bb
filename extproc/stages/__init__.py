"""The ordered stages of the request flow.

A stage is a plain class whose methods are named after the phases they handle:
``request_headers(ctx, out)``, ``request_body(ctx, out, body)``,
``response_headers(ctx, out, headers)``, ``response_body(ctx, out, chunk,
end_of_stream)``, and ``done(ctx)`` once per request. The processor calls each
that exists, in the order below; a phase hook may be a coroutine and is then
awaited, while ``done`` is a plain function (it runs when the stream closes,
even a cancelled one, so it must not wait). A stage whose ``done`` work needs a store
read first has a ``closing(ctx)`` hook, which may return an awaitable: the processor
awaits it off the closed stream and runs the ``done`` hooks after it.
"""
