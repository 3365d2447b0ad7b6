"""A server process for the Refine all kill test: `start` begins a batch's job as an admin, `resume`
does what the app does when it starts (resume_interrupted); both then wait for the job, with the
slow stub backend, and print the questions they generated, one JSON line.

    python -m tests.helpers.refine_all_process DB BATCH_ID start|resume TOKEN_DELAY_S
"""

from __future__ import annotations

import json
import sys

from cap_app.annotate import batch_refinement
from cap_app.annotate.accounts import Identity
from cap_app.annotate.store import Store
from tests.helpers.slow_backend import SlowBackend


def main(argv: list[str]) -> int:
    db, batch_id, action, delay = argv[0], int(argv[1]), argv[2], float(argv[3])
    store, backend = Store(db), SlowBackend(delay)
    if action == "start":
        batch_refinement.start(
            store, batch_id, Identity("lead", "admin", "api"), batch_refinement.JobSettings(), backend=backend
        )
    else:
        assert batch_refinement.resume_interrupted(store, backend=backend) == [batch_id]
    print("started", flush=True)
    batch_refinement.wait(batch_id)
    print(json.dumps(backend.started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
