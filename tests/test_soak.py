"""The soak in small (issue 20): 20 node processes for 2 minutes, one restarted every 10 s.

``benchmarks/soak.py``'s quick form, asserted: a long-lived node among 19 workers
restarted round robin (alternately SIGTERM and SIGKILL) never removes a worker whose
process was not being stopped, adds every new instance, removes every stopped one, and
ends with the file descriptors, threads and asyncio tasks it had after the warm-up.

Its resident memory is held to a loose bound only: two minutes are inside the first
restart cycle (every slot restarts once in 190 s), so the process is still reaching its
working set, and the fitted window after the 40 s warm-up is 80 s long, where a single
allocator step of a few hundred KB of a ~36 MB process already reads as several percent
per 10 minutes.  The bound (20 % per 10 min, about 1 MB over the window) still catches a
leak of the order of 100 KB per restart; the 1 % goal is the 30-minute run's
(``python -m benchmarks --only soak``, recorded in benchmarks/RESULTS.md).  Threads may
end lower than they started (idle hook threads end after 30 s), never higher.

About 2 minutes of wall time.  Loopback only (127.255.255.255).
"""

from __future__ import annotations

import pytest

from benchmarks import soak

pytestmark = pytest.mark.chaos

#: Loose bound on the fitted resident memory slope of the 2-minute form (see above).
RSS_SLOPE_BOUND = 20.0
#: What an integer metric may end above its level right after the warm-up (medians of the
#: first and last tenth of the samples): a hook thread busy at the last sample.
SLACK = {"fds": 0, "threads": 1, "tasks": 1}


@pytest.mark.timeout(420)
def test_a_long_lived_node_stays_flat_and_right_through_two_minutes_of_restarts() -> None:
    r = soak.measure(soak.QUICK_MINUTES)
    assert r["restarts"] >= soak.QUICK_MINUTES * 60 / soak.RESTART_EVERY - 2
    assert not r["false_removals"], f"live workers removed: {r['false_removals']}"
    assert not r["died_unasked"], f"workers died unasked: {r['died_unasked']}"
    assert not r["never_seen"], f"instances the long-lived node never added: {r['never_seen']}"
    assert not r["never_removed"], f"stopped instances never removed: {r['never_removed']}"
    assert not r["resurrected"], f"removed instances added again: {r['resurrected']}"
    # SIGTERM: the goodbye removes at once; SIGKILL: the node timeout after the last hello.
    assert r["removal_after_sigterm"]["max_s"] < 1.0
    assert r["removal_after_sigkill"]["max_s"] < soak.NODE_TIMEOUT + soak.REMOVAL_MARGIN
    slopes = r["slopes"]
    for metric, slack in SLACK.items():
        assert slopes[metric]["last"] <= slopes[metric]["first"] + slack, (metric, slopes[metric])
    assert slopes["rss"]["percent_per_10min"] < RSS_SLOPE_BOUND, slopes["rss"]
