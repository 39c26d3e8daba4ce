"""One default pydiscover node for ``benchmarks/flood.py``, spoken to in lines on stdin.

``--port`` to bind on 127.0.0.1, ``--peer HOST:PORT`` its unicast destination (``-``:
none), ``--max-nodes`` the option.  Prints ``{"id": ...}`` once started, then answers each command with one JSON line:

* ``watch ID``: remember whether ``ID`` is ever removed (only watched ids are kept, so the
  flood's own removals cost no memory);
* ``mark [ID ...]``: resident memory, CPU seconds, table size, packets in, the
  ``table_full`` drops, the watched ids removed so far and which of the ``ID``\\ s are in
  the table now.

Runs until stdin closes.  Loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks._harness import rss
from pydiscover import Discovery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--max-nodes", type=int, help="the option of that name (default: the library's)")
    args = parser.parse_args()
    options = {} if args.max_nodes is None else {"max_nodes": args.max_nodes}
    d = Discovery(address="127.0.0.1", port=args.port, unicast=[] if args.peer == "-" else [args.peer], **options)
    watched: set[str] = set()
    removed: list[str] = []
    d.on("removed", lambda node: removed.append(node.id) if node.id in watched else None)
    d.start()
    print(json.dumps({"id": d.me.id}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "watch":
            watched.update(words[1:])
            print("{}", flush=True)
        elif words[0] == "mark":
            stats, nodes = d.stats, d.nodes
            print(json.dumps({
                "rss": rss(), "cpu": time.process_time(), "nodes": len(nodes), "packets_in": stats["packets_in"],
                "table_full": stats["dropped"].get("table_full", 0), "removed": removed,
                "present": [iid for iid in words[1:] if iid in nodes],
            }), flush=True)
    d.stop()


if __name__ == "__main__":
    main()
