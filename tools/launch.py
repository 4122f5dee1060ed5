"""Launch a script on CPU processes with ``accelerate launch`` (gloo): the demo's and the tests' one recipe.

``accelerate launch --cpu --num_processes 2`` starts a single process (accelerate 1.15); ``--multi_gpu``
with ACCELERATE_USE_CPU=true starts them all, on a free rendezvous port so two launches on one machine
do not collide.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    """A port nothing listens on now, for the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_launch(script: str, args: Sequence[str] = (), processes: int = 1) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``script args`` on ``processes`` CPU processes, fp32, no dynamo."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    dist = ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(free_port())] \
        if processes > 1 else ["--num_processes", "1"]
    cmd = [accelerate, "launch", *dist, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           script, *args]
    return cmd, dict(os.environ, ACCELERATE_USE_CPU="true")
