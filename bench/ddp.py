"""Training throughput of 2-process gloo DDP (``torchrun``) against one process with 2 threads.

Both train the same model on the same data with the same global batch: CNN002 on ``mnist5kwo9``
(``--max-train`` images, natural, SGD, global batch 128), ``--epochs`` epochs after one warm-up
epoch, samples per second from the history's training seconds (the test evaluation excluded).
DDP: ``torchrun --nproc_per_node 2`` with one thread per process (gloo all-reduce of the
gradients every step); single: one process with ``torch.set_num_threads(2)``.

    .venv/bin/python bench/ddp.py [--max-train 2048] [--epochs 2]

A third line times one process with one thread, for reference: on a machine where other jobs
hold the cores, two OpenMP threads in one process can be slower than one (they spin waiting
for each other), which flatters DDP in the ratio.

Last line: ``ddp throughput vs single: <ratio>`` (DDP samples/s over single's; on 2 cores,
>= 0.8 shows the wiring adds little).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = """\
import json, sys, time
import torch
from probelib import distributed
from probelib.data import load_dataset
from probelib.store import Store
from probelib.training import default_config, train

threads, max_train, epochs, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
cfg = default_config("mnist5kwo9", epochs=epochs + 1, max_train=max_train, max_test=256, schedule="constant")
splits = cfg.prepare(load_dataset(cfg.dataset))
model = cfg.build(splits)
_, history = train(model, splits, cfg, device="cpu", progress=False)
if distributed.is_main_process():
    n = len(splits.train)
    seconds = float(history["seconds"].iloc[1:].sum())  # after the warm-up epoch
    json.dump({"samples_per_s": n * epochs / seconds, "seconds": seconds, "n": n,
               "world_size": distributed.context().world_size if distributed.context() else 1}, open(out, "w"))
distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="probelib-bench-ddp-") as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "PYTHONPATH": str(repo), "PROBELIB_PRECOMPUTED": str(Path(tmp) / "store")}
        common = [str(args.max_train), str(args.epochs)]
        single = Path(tmp) / "single.json"
        subprocess.run([sys.executable, str(script), "2", *common, str(single)],
                       env={**env, "OMP_NUM_THREADS": "2"}, check=True)
        one = Path(tmp) / "one.json"  # reference: one process, one thread
        subprocess.run([sys.executable, str(script), "1", *common, str(one)],
                       env={**env, "OMP_NUM_THREADS": "1"}, check=True)
        ddp = Path(tmp) / "ddp.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(_free_port()), str(script), "1", *common, str(ddp)],
                       env={**env, "OMP_NUM_THREADS": "1"}, check=True)
        s, o, d = (json.loads(p.read_text()) for p in (single, one, ddp))
    print(f"single (1 process, 2 threads): {s['samples_per_s']:8.1f} samples/s ({s['n']} images x {args.epochs} "
          f"epochs in {s['seconds']:.1f} s)")
    print(f"reference (1 process, 1 thread): {o['samples_per_s']:6.1f} samples/s ({o['seconds']:.1f} s)")
    print(f"ddp (2 processes x 1 thread):  {d['samples_per_s']:8.1f} samples/s ({d['seconds']:.1f} s)")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"ddp throughput vs single: {d['samples_per_s'] / s['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
