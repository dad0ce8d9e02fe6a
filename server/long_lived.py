"""Objects that live as long as the process, kept out of the garbage collector's full passes.

A process that has imported torch and transformers holds ~200,000 objects the collector tracks
(modules, functions, classes), and a full collection walks all of them: 0.09-0.14 s here, with
the event loop or the engine's step loop stopped, every time enough new objects have survived.
Those objects never become garbage, so once a process has started they are moved to the
collector's permanent generation (`gc.freeze`); full passes then walk only what came later.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect what is garbage now, then exempt every object alive from later collections;
    returns how many are exempt. Called once a process has started (imports done, model and
    application built); what a frozen object later drops is still freed by reference counts."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
