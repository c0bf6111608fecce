"""Usual scenarios: run with ``atasks run examples/scenarios.py``.

In loopback mode (the default) one process serves and calls. Over RabbitMQ, start servers with
``atasks run examples/scenarios.py --mode server --url amqp://...`` and a client with
``--mode client``, all with the same ``ATASKS_SECRET`` (unsigned pickle is refused over a broker).
"""

import asyncio
from collections.abc import AsyncIterator

from atasks import atask


@atask
async def add(a: int, b: int) -> int:
    return a + b


@atask
async def total(numbers: list[int]) -> int:
    """Sequential awaits: one after the other."""
    result = 0
    for number in numbers:
        result = await add(result, number)
    return result


@atask
async def squares(n: int) -> list[int]:
    """Parallel awaits: all at once with gather."""
    return list(await asyncio.gather(*(square(i) for i in range(n))))


@atask
def square(x: int) -> int:
    """A plain function: runs in the server's thread pool, awaited all the same."""
    return x * x


@atask
async def fibonacci(n: int) -> int:
    """Recursion: each level awaits two atasks in parallel."""
    if n < 2:
        return n
    a, b = await asyncio.gather(fibonacci(n - 1), fibonacci(n - 2))
    return a + b


@atask
async def countdown(n: int) -> AsyncIterator[int]:
    """A stream: each item reaches the caller's ``async for`` as the server yields it."""
    for i in range(n, 0, -1):
        yield i


class NotEnoughMoney(Exception):
    pass


@atask(throws=(NotEnoughMoney,))  # part of its contract: logged at INFO, no traceback
async def withdraw(balance: int, amount: int) -> int:
    """An error that crosses the wire and is raised where the atask is awaited."""
    if amount > balance:
        raise NotEnoughMoney(f"cannot withdraw {amount} from {balance}")
    return balance - amount


async def aiomain(n: int = 10) -> None:
    print("sequence:", await total(list(range(n + 1))))
    print("parallel:", await squares(n))
    print("recursion:", f"fibonacci({n}) =", await fibonacci(n))
    print("stream:", [i async for i in countdown(n)])
    try:
        await withdraw(5, 20)
    except NotEnoughMoney as exc:
        print("error:", type(exc).__name__, exc)
