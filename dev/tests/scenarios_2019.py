"""A module of atasks written as 2019 users wrote them: ``from atasks.tasks import atask``, and an
``aiomain(**options)`` that reads the command's options (``options["mode"]``).

Run by the tests with ``atasks run`` and ``manage.py run_atask``, in loopback mode and as server
and client over RabbitMQ.
"""

import asyncio
import logging

from atasks.tasks import atask

logger = logging.getLogger(__name__)


@atask
async def slow_echo(value, seconds=0.05):
    logger.info("slow_echo(%r) sleeps %ss", value, seconds)
    await asyncio.sleep(seconds)
    return value


@atask
async def shout(word):
    return word.upper() + "!"


@atask
async def one_after_another():
    first = await slow_echo("first")
    second = await shout(first)
    return [first, second]


@atask
async def all_at_once(n):
    return await asyncio.gather(*[slow_echo(i, 0.05 * (n - i)) for i in range(n)])


async def aiomain(**options):
    if options["mode"] not in ("client", "loopback"):
        return  # a server only serves
    print("mode:", options["mode"], "transport:", options["transport"])
    print("sequence:", await one_after_another())
    print("parallel:", await all_at_once(5))
    print("shout:", await shout("done"))
