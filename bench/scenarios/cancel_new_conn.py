"""``cancel_new_conn``: many concurrent streams cancelled one by one, each cancel on a new connection.

As ``cancel``'s concurrent run, but no cancel has a keep-alive connection
opened for it beforehand: each opens its own (and closes it after), so the
time from the instant before the cancel is sent includes the TCP connect and
the accept by a proxy busy relaying every other stream. A user's tab that was
idle long enough for its connection to be closed cancels this way.
"""

from __future__ import annotations

from ..report import Table, bottleneck
from . import Context
from .cancel import COLUMNS, RATE, READ_FIRST, SYN_NOTE, TOKENS_NOTE, no_cancel_rows, run_concurrent


def run(ctx: Context) -> Table:
    n = ctx.settings.cancel_concurrent
    table = Table(
        "cancel_new_conn",
        f"{n} concurrent streams (rate {RATE:g}) cancelled one by one, each cancel on a new connection "
        f"({READ_FIRST} deltas read, then POST /requests/{{id}}/cancel on a connection of its own)",
        COLUMNS,
    )
    no_cancel_rows(ctx, table)
    label = f"cancelproxy, {n} concurrent, new connection per cancel"
    ramp_s, window_s, window = run_concurrent(ctx, table, label, new_connections=True)
    table.notes += [
        f"started over {ramp_s:.1f} s, then cancelled one by one over {window_s:.1f} s while the others stream on "
        f"(up to {n * RATE:,.0f} deltas/s relayed meanwhile); each cancel opens a TCP connection, sends its request "
        "and closes it: cancel → provider closed and the ack are timed from the instant before the connect",
        SYN_NOTE,
        TOKENS_NOTE,
    ]
    limit = bottleneck(window, ctx.fleet_cores, ctx.settings.clients)
    if limit:
        table.notes.append(f"limited by {limit}")
    return table
