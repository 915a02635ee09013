"""``make test-learning``: the learning proofs (``pytest -m learning``) in three pytest processes
side by side, one thread each, their output interleaved line by line under a shard label.

Separate one-thread processes do more work per second on a 2-core CPU than one two-thread
process (the tiny models' kernels do not keep two threads busy), and one thread per test,
whatever the machine's cores, keeps a test's figures independent of where it runs. The shards
are fixed (pytest-xdist's ``--dist loadgroup`` would do the grouping, but with pytest 9.2 it
silently stops grouping: pytest-dev/pytest-xdist#1386): the REC tests, the detection test, and
the reasoning and label-free tests, in ``tests/test_learning.py``'s order, so the label-free
test finds the reasoning seed-0 models in its own process. Three processes on two cores share
them: the detection test (the longest) and the reasoning + label-free pair go on at full speed
once the REC test ends, where two fixed shards left one core idle at the end.

    python tests/run_learning.py [more pytest arguments]
    LIT_VR1_LEARNING_SEEDS=0,1,2 python tests/run_learning.py   # the REC and reasoning tests on 3 seeds

Each test's line (``-v``) and figures (``-rP``) come as it ends; each shard's wall time at the end.
Exit status: 0 when every shard passes, else the first failing shard's. Stopped (SIGTERM or
Ctrl-C), it stops its shards too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the last shard is the others' complement, so a learning test added later runs in one of them
SHARDS = (("rec", "test_rec_"), ("detection", "test_detection_"),
          ("reasoning+label_free", "not (test_rec_ or test_detection_)"))
THREADS = "1"


def learning_seeds(text: str) -> list[int]:
    """The seeds of the REC and reasoning learning tests, from ``LIT_VR1_LEARNING_SEEDS``
    ("0,1,2"; empty: seed 0). ValueError for anything else."""
    parts = [part.strip() for part in (text or "0").split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"SEEDS={text!r} is not a list of seeds; write e.g. SEEDS=0,1,2")
    return [int(part) for part in parts]


def _relay(label: str, stream, lock: threading.Lock, start: float, ended: dict[str, float]) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            sys.stdout.write(f"[{label}] {line}")
            sys.stdout.flush()
    ended[label] = time.monotonic() - start  # the shard's output closed: its pytest has ended


def main(argv: list[str]) -> int:
    try:
        learning_seeds(os.environ.get("LIT_VR1_LEARNING_SEEDS", ""))
    except ValueError as err:
        print(f"make test-learning: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ, LIT_VR1_TEST_THREADS=THREADS, OMP_NUM_THREADS=THREADS, PYTHONUNBUFFERED="1")
    lock = threading.Lock()
    procs, relays = [], []
    start = time.monotonic()
    ended: dict[str, float] = {}
    for label, selection in SHARDS:
        cmd = [sys.executable, "-m", "pytest", "-v", "-m", "learning", "-k", selection, "-rP", "-p", "no:cacheprovider",
               *argv]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        relay = threading.Thread(target=_relay, args=(label, proc.stdout, lock, start, ended), daemon=True)
        relay.start()
        procs.append((label, proc))
        relays.append(relay)
    codes = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the shards
    try:
        for (_, proc), relay in zip(procs, relays):
            codes.append(proc.wait())
            relay.join()
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
    for (label, _), code in zip(procs, codes):
        print(f"{label}: {'passed' if code == 0 else f'FAILED (pytest exit status {code})'} after {ended[label]:.0f} s")
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
