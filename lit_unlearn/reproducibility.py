"""Same command, same CPU kind, same numbers: pin the torch thread count and record the environment.

A float reduction's result depends on how the work is split across threads, and torch's default thread count
follows the machine's cores and ``OMP_NUM_THREADS``. Pinning the count makes a run's numbers independent of both;
one thread is also the fastest setting for the tiny models (a 2-thread matmul of these sizes spends more time
synchronising than computing), and lets independent runs use the other cores in parallel.
"""

import os
import platform

import lightning
import torch
import transformers

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Variables that set the thread pools of the math libraries when a process starts."""


def pin_threads(num_threads: int = 1) -> None:
    """Run torch's CPU kernels on exactly ``num_threads`` threads in this process and in processes it starts.

    Args:
        num_threads: Intra-op thread count (≥ 1).

    Raises:
        ValueError: ``num_threads`` < 1.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be ≥ 1, got {num_threads}.")
    torch.set_num_threads(num_threads)
    for name in THREAD_ENV:
        # Children read these when their libraries start (the spawned build processes of the quickstart).
        os.environ[name] = str(num_threads)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str | int]:
    """What a result depends on besides the code and data: library versions, thread count and CPU."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "torch threads": torch.get_num_threads(),
        "CPU": cpu_model(),
        "CPU cores visible": os.cpu_count() or 0,
    }
