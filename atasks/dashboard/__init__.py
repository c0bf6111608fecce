"""``atasks dashboard``: a web page of a namespace's servers, queues, live calls, dead letters
and schedules (the ``dashboard`` extra: Starlette and uvicorn).

``command`` (the CLI's) imports neither; ``board`` gathers the data from the broker, ``tree``
builds the call tree from events, ``app`` serves it all with the files in ``static/``.
"""
