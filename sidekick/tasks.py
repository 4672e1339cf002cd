"""Stopping background tasks for certain."""

from __future__ import annotations

import asyncio
from typing import Any

# How long a cancelled task has to end before it is cancelled again.
_RECANCEL_S = 0.01


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel the tasks and return once every one has ended.

    One cancellation is not always enough: on Python 3.11, ``asyncio.wait_for``, through which
    redis-py sends every command (its connections have a socket timeout by default), swallows a
    cancellation that arrives as the command is sent, and the task runs on as if never
    cancelled. A task still running after a moment is cancelled again.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
    await asyncio.gather(*tasks, return_exceptions=True)  # retrieves their exceptions
