"""Fault injection over the whole pipeline (the whole-system issue).

Each iteration sends DICOM studies (dcmtk ``storescu``) to a bucket on a node that uses a
real gearmand and a separate ``magickbox worker``, and drops Stability reports into a
directory that ``hops-stability watch`` feeds to a real carbon-cache; at a random moment
it SIGKILLs one of node / worker / gearmand / carbon, restarts it, waits until everything
has settled and checks the invariants (cumulatively, over every iteration so far):

* every instance storescu saw acknowledged is in the archive, exactly once, and reads;
* every study with archived instances produced exactly one job, which succeeded with one
  committed result whose input is exactly the archived instances;
* every Stability report is archived once, if and only if its datapoints are in whisper;
* nothing is left in temporary places (node tmp/, job ``.input-*``/``active``, the
  scanner directory);
* every job's routed file reached the storescp destination and the job's ``routing``
  says so; every job's measure is in whisper and the job's ``measures`` says delivered.

Seeded: ``HOPS_SYSTEM_SEED`` (default: random, printed; a failure names it),
``HOPS_SYSTEM_ITERATIONS`` (default 3, or 50 with ``HOPS_LONG=1``)::

    HOPS_LONG=1 .venv/bin/python -m pytest tests/system -x
    HOPS_SYSTEM_SEED=1234 HOPS_SYSTEM_ITERATIONS=10 .venv/bin/python -m pytest tests/system
"""
from __future__ import annotations

import os
import random
import time

import pytest
from harness import COMPONENTS, PipelineSystem

LONG = os.environ.get("HOPS_LONG") == "1"
ITERATIONS = int(os.environ.get("HOPS_SYSTEM_ITERATIONS", "50" if LONG else "3"))
SEED = int(os.environ.get("HOPS_SYSTEM_SEED") or random.SystemRandom().randrange(1, 10**6))


@pytest.mark.timeout(600 + 120 * ITERATIONS)
def test_killing_any_component_at_any_moment_breaks_no_invariant(tmp_path):
    print(f"HOPS_SYSTEM_SEED={SEED} HOPS_SYSTEM_ITERATIONS={ITERATIONS}",
          flush=True)
    rng = random.Random(SEED)
    system = PipelineSystem(tmp_path, rng)
    history: list[str] = []
    try:
        system.start()
        for iteration in range(1, ITERATIONS + 1):
            started = time.monotonic()
            victim = rng.choice(COMPONENTS)
            kill_at = rng.uniform(0.0, 4.0)
            down_for = rng.uniform(0.1, 2.0)
            studies = [system.new_study(rng.randint(5, 40)) for _ in range(rng.randint(1, 3))]
            plan = sorted([(rng.uniform(0.0, 3.0), "study", s) for s in studies]
                          + [(rng.uniform(0.0, 3.0), "report", None) for _ in range(rng.randint(1, 2))]
                          + [(kill_at, "kill", None)], key=lambda e: e[0])
            t0 = time.monotonic()
            for at, what, study in plan:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                if what == "study":
                    system.send(study)
                elif what == "report":
                    system.drop_report()
                else:
                    system.kill(victim)
                    time.sleep(down_for)
                    system.restart(victim)
            system.collect_sends()
            jobs = system.wait_quiescent(timeout=120)
            found = system.violations(jobs)
            line = (f"iteration {iteration}: killed {victim} at {kill_at:.2f} s for {down_for:.2f} s; "
                    f"{len(studies)} studies, {sum(len(s.acked) for s in studies)}/{sum(len(s.files) for s in studies)} "
                    f"instances acknowledged; {len(jobs)} jobs in all; {time.monotonic() - started:.1f} s")
            history.append(line)
            print(line, flush=True)
            assert not found, "invariant violations:\n  " + "\n  ".join(found)
    except AssertionError as exc:
        raise AssertionError(f"seed {SEED} (HOPS_SYSTEM_SEED={SEED} to repeat), after:\n" + "\n".join(history)
                             + f"\n{exc}\nlogs in {tmp_path}") from None
    finally:
        system.stop()
