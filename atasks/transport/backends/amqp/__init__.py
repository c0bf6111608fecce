"""AMQP 0-9-1 transport (RabbitMQ 3.10 and newer, 4.x included) on aio-pika.

- ``topology``: names and declare arguments of a namespace's exchanges and queues;
- ``wire``: requests, replies and progress reports as AMQP properties (pure);
- ``connection``: one connection and its channels, reconnected with jittered back-off;
- ``client``: publishing requests and matching replies; ``server``: consuming and serving them,
  with ``intake`` deciding how much each queue's consumer may take;
- ``transport``: ``AMQPTransport``, all of it together; ``monitor``: ``atasks inspect/events``.

A server acks a request only after its reply is confirmed, so a server that dies mid-call
leaves the request to another server; such deliveries are counted (by the quorum queue, or by
atasks in a header), a request whose servers died twice runs alone from the namespace's
suspects queue, and one past ``delivery_limit`` is dead-lettered and its caller told.
"""

from atasks.transport.backends.amqp.transport import DEFAULT_URL, URL_ENV, AMQPTransport

__all__ = ["DEFAULT_URL", "URL_ENV", "AMQPTransport"]
