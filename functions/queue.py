"""Queue trigger: a thin adapter from the rows-queue message to :mod:`shared.sources.queue_ingest`.

Returning completes the message (rows delivered, or dead-lettered with a reason); a raised
TransientError makes the host redeliver it, and after ``maxDequeueCount`` tries move it to
``<queue>-poison`` (host.json). host.json sets ``messageEncoding: none`` so that a malformed
message reaches this function and is dead-lettered at once (see ``shared/sources/messages.py``).
"""

from __future__ import annotations

import azure.functions as func

from shared.runtime import get_queue_ingest

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # the library leaves __init__ untyped


@bp.function_name("ingest_queue")
@bp.queue_trigger(arg_name="msg", queue_name="%ROWS_QUEUE%", connection="AzureWebJobsStorage")
async def ingest_queue(msg: func.QueueMessage) -> None:
    """Push one message's rows, coalesced with the other messages arriving for that table.

    ``async`` on purpose: the worker runs it on its event loop, so hundreds of invocations can
    wait for a shared POST without a thread each.
    """
    await get_queue_ingest().handle(msg.get_body(), msg.id or "?", msg.dequeue_count or 1)
