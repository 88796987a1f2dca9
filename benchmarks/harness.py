"""One harness for every benchmark suite.

A suite is a module ``benchmarks/bench_<name>.py`` with ``run(h: Harness, quick: bool)``. It
calls :meth:`Harness.measure` for each thing it times; rows sharing a ``group`` are one
side-by-side comparison (genjax beside the reference it replaces). The harness

* compiles and runs each function once (warm-up), then times ``repeats`` calls, each ended by
  ``jax.block_until_ready``, and reports the median;
* measures this machine's matmul peak itself (a large jitted float32 matmul, best of several),
  and reports every row's achieved GFLOP/s as a fraction of it;
* writes ``benchmarks/results/<suite>.json`` and a Markdown table ``<suite>.md``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

RESULTS = Path(__file__).parent / "results"


@dataclasses.dataclass
class Row:
    """One timed function: median seconds per call and what follows from it."""

    group: str
    name: str
    median_s: float
    items: float | None
    unit: str
    flops: float | None
    peak_gflops: float
    calls: int | None = None  # timed calls behind the median, when not the suite's default

    @property
    def throughput(self) -> float | None:
        return None if self.items is None else self.items / self.median_s

    @property
    def gflops(self) -> float | None:
        return None if self.flops is None else self.flops / self.median_s / 1e9

    @property
    def peak_fraction(self) -> float | None:
        return None if self.gflops is None else self.gflops / self.peak_gflops


def time_call(fn: Callable, *args, repeats: int = 10, warmup: int = 1) -> list[float]:
    """Seconds for each of ``repeats`` calls of ``fn(*args)``, after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tic)
    return times


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate in GFLOP/s: best of ``repeats`` ``n x n`` products."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / min(time_call(f, a, repeats=repeats)) / 1e9


def flops_of(fn: Callable, *args) -> float | None:
    """FLOPs of the compiled ``fn(*args)`` by XLA's cost analysis, or ``None`` if unknown."""
    try:
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # cost analysis is best-effort and backend-dependent
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value else None


def image_dataset(shape, num_classes: int = 1):
    """The benchmarks' images of ``shape``: scikit-learn's digits at 8x8, otherwise 1024 random
    8-bit images with random labels in ``[0, num_classes)`` (timing does not depend on the
    pixels, and the benchmarks need no download)."""
    import numpy as np

    from genjax.data import Dataset, load_dataset

    if tuple(shape) == (8, 8, 1):
        return load_dataset("digits")
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, size=(1024, *shape)) / 255.0).astype(np.float32)
    y = rng.integers(0, num_classes, size=len(x)).astype(np.int32)
    return Dataset("uniform8bit", {"x": x, "y": y}, {"x": x[:256], "y": y[:256]}, num_classes, 256)


LOOP = "genjax loop (lax.scan chunk)"


def chained(chunk: Callable, state) -> Callable:
    """A training chunk (:func:`genjax.train.make_train_chunk`) timed as ``genjax train`` runs it:
    each call carries on from the state the previous call returned, so no call pays for copying
    the state (the chunk donates its input; only ``state`` itself is copied, once, here).
    Returns ``run(_) -> losses``, its argument ignored."""
    latest = [jax.tree.map(lambda a: a.copy(), state)]

    def run(_):
        latest[0], metrics = chunk(latest[0])
        return metrics["loss"]

    return run


PYTHON_LOOP = "python loop of jitted steps"


def train_loop_candidates(task, config, tx, state, arrays) -> tuple[float | None, dict]:
    """The training loop's scanned chunk and its reference, for ``config.log_every`` steps.

    ``LOOP`` runs :func:`genjax.train.make_train_chunk` as ``genjax train`` does; ``PYTHON_LOOP``
    dispatches the same update (gather the step's batch, :func:`genjax.train.standard_update`)
    as one jitted step per Python iteration, the way a loop without ``lax.scan`` would. Both take
    a :class:`genjax.train.TrainState`; the chunk carries on from its own last state
    (:func:`chained`).

    Returns:
      ``(flops, {name: fn})``: XLA's FLOP count for the whole chunk (``None`` if unknown) and
      the two functions of the state.
    """
    from genjax import data, train

    device_data = jax.device_put(dict(arrays))
    chunk = train.make_train_chunk(task, config, tx, device_data)
    n = data.num_examples(arrays)

    @jax.jit
    def one(s):
        idx = data.batch_indices(jax.random.key(1), s.step, n, config.batch_size)
        b = {k: v[idx] for k, v in device_data.items()}
        return train.standard_update(jax.random.key(0), task.loss, s, b, tx, config.ema_decay)[0]

    def python_loop(s):
        for _ in range(config.log_every):
            s = one(s)
        return s.params

    step_flops = flops_of(one, state)
    flops = None if step_flops is None else step_flops * config.log_every
    return flops, {LOOP: chained(chunk, state), PYTHON_LOOP: python_loop}


def torch_rows(
    h: Harness,
    group: str,
    make_loop: Callable[[], Callable],
    *,
    items: float,
    unit: str,
    flops: float | None,
    repeats: int | None = None,
) -> None:
    """PyTorch eager reference rows of ``group``: one per intra-op thread count (1 and all cores),
    each the median of ``repeats`` calls (default: the harness's; quick runs time several
    threads once).

    ``make_loop()`` is called after ``torch.manual_seed(0)`` and ``torch.set_num_threads(n)``
    and returns the function to time (one argument, ignored), which builds nothing itself: the
    modules, optimisers and data are made once by ``make_loop``. The rows are skipped, with a
    note, when torch is not importable (it lives in the ``bench`` extra).
    """
    import importlib.util
    import os

    if importlib.util.find_spec("torch") is None:
        print(f"[{group}] PyTorch rows skipped: torch is not importable (pip install '.[bench]')")
        return
    import torch

    for threads in sorted({1, os.cpu_count() or 1}):
        torch.manual_seed(0)
        torch.set_num_threads(threads)
        loop = make_loop()
        name = f"PyTorch {torch.__version__} eager, {threads} thread{'s' if threads > 1 else ''}"
        # several intra-op threads on a busy machine spin for seconds per step: time them once
        calls = 1 if threads > 1 and h.quick else repeats
        h.measure(group, name, loop, None, items=items, unit=unit, flops=flops, repeats=calls)


class Harness:
    """Collects rows for one suite; see the module docstring."""

    def __init__(self, suite: str, quick: bool = False):
        self.suite = suite
        self.quick = quick
        self.repeats = 3 if quick else 10
        self.peak_gflops = measure_matmul_peak(1024 if quick else 2048)
        self.rows: list[Row] = []

    def measure(
        self,
        group: str,
        name: str,
        fn: Callable,
        *args,
        items: float | None = None,
        unit: str = "items",
        flops: float | None = None,
        repeats: int | None = None,
    ) -> Row:
        """Time ``fn(*args)`` (already jitted, or it will be timed as it is).

        Args:
          group: comparison this row belongs to (e.g. ``"attention fwd L=512"``).
          name: what is timed (e.g. ``"genjax"``, ``"jax.nn.dot_product_attention"``).
          fn: the function; its first call (warm-up) includes compilation.
          items: work items per call (examples, tokens ...) for the throughput column.
          unit: the name of an item.
          flops: FLOPs per call; ``None`` asks XLA's cost analysis.
          repeats: timed calls (default 10, quick 3).
        """
        if flops is None:
            flops = flops_of(fn, *args)
        calls = repeats or self.repeats
        times = time_call(fn, *args, repeats=calls)
        median = statistics.median(times)
        own = None if calls == self.repeats else calls
        row = Row(group, name, median, items, unit, flops, self.peak_gflops, own)
        self.rows.append(row)
        return row

    def markdown(self) -> str:
        """The suite's table; ``vs best`` is time relative to the fastest row of its group."""
        best = {}
        for r in self.rows:
            best[r.group] = min(best.get(r.group, r.median_s), r.median_s)
        lines = [
            f"### {self.suite}",
            "",
            f"Machine: {machine()}; measured matmul peak {self.peak_gflops:.1f} GFLOP/s "
            f"(float32). Median of {self.repeats} timed calls after warm-up, unless a row says "
            "otherwise.",
            "",
            "| group | implementation | median ms | vs best | throughput | GFLOP/s | of peak |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            thr = "" if r.throughput is None else f"{r.throughput:,.0f} {r.unit}/s"
            gf = "" if r.gflops is None else f"{r.gflops:.1f}"
            pk = "" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f} %"
            name = r.name if r.calls is None else f"{r.name} (median of {r.calls})"
            lines.append(
                f"| {r.group} | {name} | {1e3 * r.median_s:.3f} | "
                f"{r.median_s / best[r.group]:.2f}x | {thr} | {gf} | {pk} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, directory: Path = RESULTS) -> Path:
        """Write ``<suite>.json`` and ``<suite>.md`` under ``directory``; returns the .md path."""
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "suite": self.suite,
            "machine": machine(),
            "device": device(),
            "quick": self.quick,
            "peak_gflops": self.peak_gflops,
            "rows": [
                {
                    **dataclasses.asdict(r),
                    "throughput": r.throughput,
                    "gflops": r.gflops,
                    "peak_fraction": r.peak_fraction,
                }
                for r in self.rows
            ],
        }
        (directory / f"{self.suite}.json").write_text(json.dumps(record, indent=2))
        md = directory / f"{self.suite}.md"
        md.write_text(self.markdown())
        return md


def device() -> dict[str, str]:
    """The device the JAX rows run on: ``jax.devices()[0]``'s ``platform`` and ``device_kind``.

    PyTorch reference rows (:func:`torch_rows`) always run on the CPU."""
    first = jax.devices()[0]
    return {"platform": first.platform, "device_kind": first.device_kind, "torch": "cpu"}


def machine() -> str:
    """A one-line description of the machine, the JAX version and the device the rows ran on."""
    import os

    dev = device()
    return (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {dev['platform']} ({dev['device_kind']}); "
        f"PyTorch rows on {dev['torch']}"
    ).replace("  ", " ")
