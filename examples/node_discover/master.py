"""node-discover's examples/master.js in Python: two masters wanted, promote and demote by hand.

Start three or more (loopback only) and type commands: promote, demote, demote true,
list, me::

    python examples/node_discover/master.py

The weight is ``-now_ms`` as in master.js, so the two oldest processes are the masters.
As in basic.py, the port (41241), loopback broadcast, timings and run time are options.
"""

from __future__ import annotations

import sys
import threading
import time

from basic import arguments

from pydiscover.compat import Discover

_output = threading.Lock()


def write(text: str) -> None:
    with _output:
        sys.stdout.write(text)
        sys.stdout.flush()


def prompt(text: str = "") -> None:
    write(text + "\n> ")


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv, 41241)
    d = Discover({
        "key": args.key, "weight": time.time() * 1000 * -1,
        "mastersRequired": 2,
        "port": args.port, "broadcast": args.broadcast, "helloInterval": args.hello_interval,
        "checkInterval": args.check_interval, "nodeTimeout": args.node_timeout,
    })

    write("I am " + d.broadcast.instanceUuid + "\n")

    def added(obj):
        write("\nNew node discovered on the network.")
        prompt()

    def promotion(obj):
        write("\nI was promoted")
        prompt()

    def demotion(obj):
        write("\nI was demoted")
        prompt()

    def removed(obj):
        write("\nNode lost from the network.")
        prompt()

    def error(err):
        write(f"error {err}\n")
        prompt()

    d.on("added", added)
    d.on("promotion", promotion)
    d.on("demotion", demotion)
    d.on("removed", removed)
    d.on("error", error)

    write("\n")
    write("************************************************\n")
    write("commands: promote, demote, demote true, list, me\n")
    write("************************************************\n")
    prompt()

    def commands() -> None:  # process.stdin.on('data', ...): a reader thread, ending with stdin
        for chunk in sys.stdin:
            data = chunk.lower().strip()
            if data == "promote":
                prompt("Promoting")
                d.promote()
            elif data == "demote":
                prompt("Demoting")
                d.demote()
            elif data == "demote true":
                prompt("Demoting permanently")
                d.demote(True)
            elif data == "list":
                write(f"{d.nodes}\n")
                prompt()
            elif data == "me":
                write(f"{d.me}\n")
                prompt()
            else:
                prompt()

    threading.Thread(target=commands, daemon=True).start()
    time.sleep(args.duration)
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
