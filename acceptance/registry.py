"""The acceptance checks of the closeout pack, collected from their modules' ``CHECK`` declarations.

Why a registry: the manifest, the verdict, the HTML report and the scheduled runs all need the same list of
check ids, titles and artifact names. Each ``acceptance/check_*.py`` declares itself once
(``CHECK = CheckSpec(...)``, acceptance/spec.py, used by its ``pytestmark``); this module imports them and
orders them. Run order: check 5 (join_check) judges every call the run made, check 6's included, so it runs
after it; check 1 (service_status) runs last, so it sees whether the unit restarted while the others ran
(each of these says so with ``run_last``).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from acceptance.spec import CheckSpec

PACKAGE = Path(__file__).resolve().parent
PREFIX = "check_"


#: check id -> its module (registered as a pytest plugin for the report hook, acceptance/hookspecs.py)
MODULES: dict[str, ModuleType] = {}


def discover() -> tuple[CheckSpec, ...]:
    """Every ``acceptance/check_*.py``'s ``CHECK``, in display order; a module without one, a duplicate id or
    order, or a module named for another id is a programming error (raised at import, one line)."""
    found: list[CheckSpec] = []
    for info in sorted(pkgutil.iter_modules([str(PACKAGE)]), key=lambda m: m.name):
        if not info.name.startswith(PREFIX):
            continue
        module = importlib.import_module(f"acceptance.{info.name}")
        spec = getattr(module, "CHECK", None)
        if not isinstance(spec, CheckSpec):
            raise RuntimeError(f"acceptance/{info.name}.py declares no CHECK = CheckSpec(...)")
        if info.name != PREFIX + spec.id:
            raise RuntimeError(f"acceptance/{info.name}.py declares check {spec.id!r}: "
                               f"name it {PREFIX}{spec.id}.py")
        found.append(spec)
        MODULES[spec.id] = module
    for attr in ("id", "order"):
        values = [getattr(s, attr) for s in found]
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise RuntimeError(f"acceptance checks share {attr}: {', '.join(dupes)}")
    return tuple(sorted(found, key=lambda s: s.order))


CHECKS: tuple[CheckSpec, ...] = discover()
BY_ID: dict[str, CheckSpec] = {c.id: c for c in CHECKS}
#: the order checks are listed in (manifest, report, summary): the closeout pack's numbering
ORDER: dict[str, int] = {c.id: i for i, c in enumerate(CHECKS)}
#: the checks that run after all others, in the order they run
RUN_LAST: tuple[str, ...] = tuple(c.id for c in sorted((c for c in CHECKS if c.run_last is not None),
                                                        key=lambda c: c.run_last or 0))
RUN_ORDER: dict[str, int] = {cid: i for i, cid in enumerate(
    [c.id for c in CHECKS if c.run_last is None] + list(RUN_LAST))}
