"""Every exit code the project's commands give, in one table (what schedulers and CI branch on).

| code | `db_init.py` | `tools.verify` | `tools.validate` | `tools.regression` |
|---|---|---|---|---|
| 0 | schema matches | bundle verified | GO (or GO with waivers) | GO and no alarm |
| 1 | schema drift | verification failed | NO-GO (a refused bundle too) | NO-GO |
| 2 | database unreachable | bundle unusable | nothing to judge | — |
| 3 | refused, nothing changed (e.g. prune on the plain layout) | — | — | regression alarm on a GO run |
| 4 | — | — | — | bad settings |
| 75 | — | — | — | another run holds the lock (EX_TEMPFAIL: try later) |
| 124 | — | — | a child stopped at its deadline (as timeout(1)) | the suite stopped at its deadline |

With ``--nagios`` validate and regression exit with the Nagios plugin codes instead (``NAGIOS_*``).
``db_init.py`` keeps its own four constants (it is deployed alone on the gateway, without this package);
tests/test_exit_codes.py holds them to this table.
"""
from __future__ import annotations

OK = 0
FAILED = 1
UNUSABLE = 2
REGRESSION = 3
SETTINGS = 4
LOCKED = 75
TIMED_OUT = 124

NAGIOS_OK, NAGIOS_WARNING, NAGIOS_CRITICAL, NAGIOS_UNKNOWN = 0, 1, 2, 3
