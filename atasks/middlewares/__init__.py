"""atasks' own middlewares: what wraps a call besides the user's (``atasks.middleware``).

Call side, outermost first: ``ClientSpans`` (tracing), the user's middlewares, ``Capture``
(propagated context variables), ``Stamp`` (the auth context). Serve side: ``ServerSpans``,
``Events``, ``InForce`` (the verified auth context), ``Apply`` (propagated variables), the
user's middlewares, ``Retries``. Each is in a chain only where it has work: tracing
configured, events enabled, an auth context or context values present, ``@atask(retry=...)``.
"""
