"""What the server spent: Triton's statistics extension (queue and compute per model) and CPU seconds.

Shared by ``bench``, ``bench-stream`` and ``perf-analyzer``: snapshots before and after a measured window,
and their difference per model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import tritonclient.grpc as grpcclient

from fusion_emotion.server import procs


def _ns(stat: dict[str, Any] | None) -> tuple[int, int]:
    """(count, ns) of one duration statistic from the JSON statistics (int64s arrive as strings)."""
    stat = stat or {}
    return int(stat.get("count", 0) or 0), int(stat.get("ns", 0) or 0)


def flatten_model_stats(stats_json: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Triton's statistics JSON -> {model: cumulative counters} (versions summed)."""
    out: dict[str, dict[str, int]] = {}
    for m in stats_json.get("model_stats", []):
        acc = out.setdefault(m["name"], {})

        def add(key: str, value: int, acc: dict[str, int] = acc) -> None:
            acc[key] = acc.get(key, 0) + value

        add("inference_count", int(m.get("inference_count", 0) or 0))
        add("execution_count", int(m.get("execution_count", 0) or 0))
        inf = m.get("inference_stats", {})
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            count, ns = _ns(inf.get(name))
            add(f"{name}_count", count)
            add(f"{name}_ns", ns)
        for b in m.get("batch_stats", []) or []:
            for name in ("compute_input", "compute_infer", "compute_output"):
                count, ns = _ns(b.get(name))
                add(f"batch_{name}_count", count)
                add(f"batch_{name}_ns", ns)
    return out


def stats_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per-model queue/compute times of what happened between two snapshots.

    ``*_ms_per_request`` divide Triton's per-request sums by the requests' count
    (a batched execution's time is counted once per request in it);
    ``*_ms_per_execution`` come from the batch statistics, one entry per model
    execution, so their ratio shows what dynamic batching bought.
    """
    out: dict[str, dict[str, Any]] = {}
    for model, a in sorted(after.items()):
        b = before.get(model, {})
        d = {k: a.get(k, 0) - b.get(k, 0) for k in a}
        if d.get("inference_count", 0) == 0 and d.get("success_count", 0) == 0 and d.get("fail_count", 0) == 0:
            continue

        def per(ns_key: str, count_key: str, d: dict[str, int] = d) -> float | None:
            count = d.get(count_key, 0)
            return d.get(ns_key, 0) / count / 1e6 if count else None

        execs = d.get("execution_count", 0)
        out[model] = {
            "requests": d.get("success_count", 0) + d.get("fail_count", 0),
            "inferences": d.get("inference_count", 0),
            "executions": execs,
            "avg_batch": d.get("inference_count", 0) / execs if execs else None,
            "failed": d.get("fail_count", 0),
            "request_ms_per_request": per("success_ns", "success_count"),
            "queue_ms_per_request": per("queue_ns", "queue_count"),
            "compute_input_ms_per_request": per("compute_input_ns", "compute_input_count"),
            "compute_infer_ms_per_request": per("compute_infer_ns", "compute_infer_count"),
            "compute_output_ms_per_request": per("compute_output_ns", "compute_output_count"),
            "compute_input_ms_per_execution": per("batch_compute_input_ns", "batch_compute_input_count"),
            "compute_infer_ms_per_execution": per("batch_compute_infer_ns", "batch_compute_infer_count"),
            "compute_output_ms_per_execution": per("batch_compute_output_ns", "batch_compute_output_count"),
        }
    return out


class TritonStats:
    """Snapshots of Triton's statistics extension over gRPC (all models)."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)

    def read(self) -> dict[str, dict[str, int]]:
        """One raw read of the counters (may still lack the last requests' records)."""
        return flatten_model_stats(self.client.get_inference_statistics(as_json=True))

    def snapshot(self, timeout_s: float = 2.0, interval_s: float = 0.1) -> dict[str, dict[str, int]]:
        """The counters once they stop moving. Triton records a request's statistics
        after its response is sent (the ensemble's and its last step's last of all),
        so a read taken right after the client's last response can miss them; both
        ends of a measured window must be settled or the window gains or loses requests."""
        current = self.read()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            again = self.read()
            if again == current:
                break
            current = again
        return current

    def close(self) -> None:
        self.client.close()


class CpuMeter:
    """CPU seconds spent by this process (in-process targets) or by server process trees."""

    def __init__(self, server_pids: Sequence[int] | None = None) -> None:
        self.server_pids = list(server_pids or [])

    def read(self) -> float:
        return procs.tree_cpu_seconds(self.server_pids) if self.server_pids else time.process_time()
