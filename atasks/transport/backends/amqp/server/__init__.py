"""The serve side: consume request queues within the server's capacity, run each request through
the router's handler, reply, and only then ack; broadcast requests, cancellations, credits,
inspect requests and events.

A request without ``reply_to`` is fire and forget: acked once its handler finished, or, when it
failed, dead-lettered (confirmed, then acked) with its last error.

A batch (calls coalesced by their caller) is served call by call, each in a task of its own, as
if each had come alone; replies to one caller that are ready together travel together.

A request held by servers that died twice (``ISOLATE_AFTER``) is a suspect: it goes, alone, to
the namespace's suspects queue, which every server takes one request at a time. So a request
that kills its servers reaches the delivery limit without taking the calls beside it along.

One file per part, each owning what it says; they build on each other in this order:

- ``policies``: pure decisions (suspects' verdict, what is remembered how long, batch settlement);
- ``message``: a delivered request message and what a server reads of it;
- ``settlement``: replies and acks, copies handed back, dead letters;
- ``kept``: replies kept while the connection is gone; ``events``: lifecycle events;
- ``state``: what the serve paths share, and running one call;
- ``delivery``: a message as the shared serve pipeline (``atasks.transport.serving``) sees it;
- ``suspects``, ``lone``, ``batches``, ``broadcasts``, ``control``: the serve paths;
- ``consumers``: consumers and capacity; ``core``: the ``Server`` putting them together.
"""

from atasks.transport.backends.amqp.server.core import Server
from atasks.transport.backends.amqp.server.kept import Kept
from atasks.transport.backends.amqp.server.message import Message, died_running
from atasks.transport.backends.amqp.server.policies import (
    ISOLATE_AFTER,
    KEPT_FOR,
    KEPT_MAX,
    Outcome,
    Verdict,
)

__all__ = [
    "ISOLATE_AFTER",
    "KEPT_FOR",
    "KEPT_MAX",
    "Kept",
    "Message",
    "Outcome",
    "Server",
    "Verdict",
    "died_running",
]
