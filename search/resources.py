"""How trials share the cluster: per-trial resources, concurrency and GPU memory caps.

On GPUs, ``K`` trials share each GPU (Ray fractional GPUs, ``1/K`` each); each trial's
TensorFlow is capped at ``(GPU memory - 1 GiB) / K``, computed on the worker from its own GPU.
Without GPUs, trials take ``--cpus-per-trial`` CPUs each.
"""

from __future__ import annotations

import argparse
import subprocess

GPU_RESERVE_MB = 1024  # per GPU, left for the CUDA context and fragmentation
GPU_MB_PER_TRIAL = 8192  # default packing: one trial per this much GPU memory, at most 4


def gpu_memory_cap_mb(total_mb: int, trials_per_gpu: int, reserve_mb: int = GPU_RESERVE_MB
                      ) -> int:
    """TensorFlow memory cap for each of ``trials_per_gpu`` trials sharing a GPU of ``total_mb``.

    Raises:
        ValueError: if the GPU is too small to give each trial at least 512 MiB.
    """
    if trials_per_gpu < 1:
        raise ValueError(f"trials_per_gpu={trials_per_gpu}: must be at least 1")
    cap = (total_mb - reserve_mb) // trials_per_gpu
    if cap < 512:
        raise ValueError(f"a {total_mb} MiB GPU cannot hold {trials_per_gpu} trials "
                         f"({cap} MiB each); lower --trials-per-gpu")
    return int(cap)


def default_trials_per_gpu(total_mb: int | None) -> int:
    """Trials to pack on one GPU by default: one per 8 GiB of its memory, 1 to 4."""
    if not total_mb:
        return 1
    return max(1, min(4, total_mb // GPU_MB_PER_TRIAL))


def local_gpu_memory_mb() -> int | None:
    """Total memory of this machine's first GPU (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def trial_gpu_cap(trials_per_gpu: int) -> int | None:
    """The memory cap for a trial on this worker's GPU (None: memory growth, or no GPU)."""
    mem = local_gpu_memory_mb()
    return gpu_memory_cap_mb(mem, trials_per_gpu) if (mem and trials_per_gpu > 1) else None


def plan_resources(cluster: dict[str, float], args: argparse.Namespace
                   ) -> tuple[dict[str, float], int, int]:
    """Per-trial resources, concurrent trials, and trials per GPU (0 without GPUs).

    ``args.gpus`` (if set) overrides the GPUs the cluster has now: an autoscaling cluster
    starts with no GPU workers.
    """
    gpus = int(args.gpus if args.gpus is not None else cluster.get("GPU", 0))
    cpus = int(cluster.get("CPU", 0))
    if gpus and not args.cpu_only:
        k = args.trials_per_gpu or default_trials_per_gpu(local_gpu_memory_mb())
        slots = gpus * k
        return {"CPU": max(1, cpus // slots), "GPU": 1.0 / k}, slots, k
    cpt = max(1, args.cpus_per_trial)
    return {"CPU": cpt}, max(1, cpus // cpt), 0
