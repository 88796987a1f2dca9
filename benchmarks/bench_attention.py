r"""Attention: genjax's scaled dot-product attention beside jax's and flax's, and the Transformer
train step.

* Forward and forward+backward (one VJP for query, key and value) of unmasked self-attention,
  batch 4, 8 heads, head_dim 64, for L in {128, 256, 512, 1024, 2048} (quick: up to 512), for
  :func:`genjax.nn.attention.scaled_dot_product_attention`, ``jax.nn.dot_product_attention``
  (its XLA implementation, the one jax picks on CPU) and ``flax.linen.dot_product_attention``.
  FLOPs are the matmuls' exact count, the same for all three: :math:`4BHL^2d` forward
  (:math:`QK^\top` and :math:`AV`), :math:`12BHL^2d` forward+backward (four more products of
  the same size); the softmax's :math:`O(BHL^2)` is left out. The three implementations of a
  group are timed interleaved, one call each in turn (rotating the order), so that load from
  other processes on a shared machine falls on all of them alike. Besides the wall time of the
  table, each call's CPU time (this process, all threads) is recorded: other processes stretch
  wall time, not the CPU work a call needs, so on a busy machine CPU time is the steadier
  comparison. Both ratios to the fastest are in ``results/attention.analysis.md``.
* How time grows with L: a least-squares fit of :math:`\log t = p \log L + c` for each
  implementation, over all L and over the largest three (where the :math:`L^2` terms dominate);
  written to ``results/attention.analysis.md``. Derivation: derivations/03-attention.md (cost).
* Whether two implementations compile to the same program: XLA's optimised HLO of each,
  with metadata (source lines, names) stripped, compared with genjax's; and XLA's count of
  bytes accessed; also in ``results/attention.analysis.md``. genjax runs both products on
  ``[batch, heads, length, dim]`` copies of the operands; flax writes the same einsums on the
  ``[batch, length, heads, dim]`` operands, which XLA on CPU turns into a transposed, slower
  program (derivations/03-attention.md, section 6).
* The train step of the character Transformer (:mod:`genjax.recipes.transformer`): the loop's
  scanned chunk of ``STEPS`` updates, in tokens per second and fraction of the matmul peak
  (FLOPs from XLA's cost analysis of one step), at the tour's full configuration and at a
  larger one.
"""

from __future__ import annotations

import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dot_product_attention as flax_attention

from benchmarks.harness import LOOP, RESULTS, Row, time_call, train_loop_candidates
from genjax import train
from genjax.data import load_dataset
from genjax.nn.attention import scaled_dot_product_attention
from genjax.recipes import transformer as recipe

BATCH, HEADS, HEAD_DIM = 4, 8, 64
LENGTHS = (128, 256, 512, 1024, 2048)
QUICK_LENGTHS = (128, 256, 512)
IMPLEMENTATIONS = {
    "genjax": scaled_dot_product_attention,
    "jax.nn.dot_product_attention": jax.nn.dot_product_attention,
    "flax dot_product_attention": flax_attention,
}
STEPS = 10  # train steps per timed chunk
# Calls of a few milliseconds are timed more often (as many as fit in about this many seconds,
# at most MAX_REPEATS) so that a descheduling on a busy machine moves their median less.
SHORT_CALL_BUDGET_S = 2.0
MAX_REPEATS = 50
TRAIN_CONFIGS = (  # (label, recipe options, batch size)
    ("tour full config", {}, 64),
    ("larger", {"context": 128, "features": 128, "num_layers": 2, "num_heads": 4}, 16),
)


def _interleaved(h, group: str, fns: dict, args, *, flops: float, items: float, unit: str):
    """Time every ``fns[name](*args)`` at least ``h.repeats`` times (more when a call is short:
    see ``SHORT_CALL_BUDGET_S``), one call of each in turn; add a
    row per function with its median wall time. Returns the median CPU seconds per call of
    each function (this process's CPU time, all threads), which other processes on a shared
    machine do not inflate the way they inflate wall time."""
    warm = [time_call(fn, *args, repeats=1)[0] for fn in fns.values()]  # compile, warm up, time
    repeats = min(MAX_REPEATS, max(h.repeats, int(SHORT_CALL_BUDGET_S / max(warm))))
    names = list(fns)
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            tic = time.process_time()
            times[name] += time_call(fns[name], *args, repeats=1, warmup=0)
            cpu[name].append(time.process_time() - tic)
    for name in names:
        median = statistics.median(times[name])
        h.rows.append(Row(group, name, median, items, unit, flops, h.peak_gflops))
    return {name: statistics.median(cpu[name]) for name in names}


def _program(fn, args) -> tuple[str, float | None]:
    """XLA's optimised HLO of jitted ``fn(*args)`` without metadata and with instructions
    renamed canonically, and its bytes accessed."""
    compiled = fn.lower(*args).compile()
    ops = [
        re.sub(r", metadata=\{[^}]*\}|, backend_config=.*|, stack_frame_id=\d+", "", line)
        for line in compiled.as_text().splitlines()
        if re.match(r"\s*(ROOT )?%\S+ = ", line)
    ]
    names: dict[str, str] = {}  # instruction names renumbered in order of first use
    text = re.sub(r"%[\w.-]+", lambda m: names.setdefault(m[0], f"%v{len(names)}"), "\n".join(ops))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return text, (cost or {}).get("bytes accessed")


def _fwd_bwd(attention):
    """``(q, k, v, g) -> (out, (dq, dk, dv))``: the output and its VJP with cotangent ``g``."""

    def f(q, k, v, g):
        out, vjp = jax.vjp(attention, q, k, v)
        return out, vjp(g)

    return jax.jit(f)


def _bench_attention(h, lengths) -> tuple[dict, dict, list[dict]]:
    """Rows for every L. Returns the median wall and CPU times by (pass, implementation) in L
    order, and one record per (group, implementation) comparing times and compiled programs."""
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    records = []
    for length in lengths:
        keys = jax.random.split(jax.random.key(length), 4)
        shape = (BATCH, length, HEADS, HEAD_DIM)
        q, k, v, g = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)  # [B, L, H, D]
        matmul = BATCH * HEADS * length**2 * HEAD_DIM  # multiply-adds of one L x L x d product
        forward = {n: jax.jit(f) for n, f in IMPLEMENTATIONS.items()}
        backward = {n: _fwd_bwd(f) for n, f in IMPLEMENTATIONS.items()}
        passes = {
            "fwd": (forward, (q, k, v), 2 * 2 * matmul),
            "fwd+bwd": (backward, (q, k, v, g), 6 * 2 * matmul),
        }
        for pass_name, (fns, args, flops) in passes.items():
            group = f"attention {pass_name} L={length}"
            cpu_s = _interleaved(
                h, group, fns, args, flops=flops, items=BATCH * length, unit="tokens"
            )
            wall_s = {row.name: row.median_s for row in h.rows[-len(fns) :]}
            hlo = {name: _program(fn, args) for name, fn in fns.items()}
            for name in fns:
                wall.setdefault((pass_name, name), []).append(wall_s[name])
                cpu.setdefault((pass_name, name), []).append(cpu_s[name])
                records.append(
                    {
                        "group": group,
                        "name": name,
                        "wall_vs_best": wall_s[name] / min(wall_s.values()),
                        "cpu_ms": 1e3 * cpu_s[name],
                        "cpu_vs_best": cpu_s[name] / min(cpu_s.values()),
                        "same": hlo[name][0] == hlo["genjax"][0],
                        "bytes": hlo[name][1],
                    }
                )
    return wall, cpu, records


def _fit_table(lengths, times: dict, what: str) -> list[str]:
    """Markdown rows: fitted exponent p of t ∝ L^p over all L and over the largest three."""
    log_l = np.log(np.asarray(lengths, float))
    lines = [
        f"| pass | implementation | p over L = {', '.join(map(str, lengths))} | "
        f"p over L = {', '.join(map(str, lengths[-3:]))} |",
        "|---|---|---|---|",
    ]
    for (pass_name, name), t in times.items():
        log_t = np.log(np.asarray(t))
        p_all = np.polyfit(log_l, log_t, 1)[0]
        p_top = np.polyfit(log_l[-3:], log_t[-3:], 1)[0]
        lines.append(f"| {pass_name} ({what}) | {name} | {p_all:.2f} | {p_top:.2f} |")
    return lines


def _ratio_to_other(records, key: str) -> tuple[float, str]:
    """The largest ratio of genjax's time to the faster of the other two, and its group."""
    worst, where = 0.0, ""
    for group in dict.fromkeys(r["group"] for r in records):
        rows = {r["name"]: r[key] for r in records if r["group"] == group}
        ratio = rows["genjax"] / min(v for n, v in rows.items() if n != "genjax")
        if ratio > worst:
            worst, where = ratio, group
    return worst, where


def _analysis(lengths, wall, cpu, records) -> str:
    """Markdown: the 1.05x target, the fitted exponents, and the per-group comparison."""
    worst_wall, at_wall = _ratio_to_other(records, "wall_vs_best")
    worst_cpu, at_cpu = _ratio_to_other(records, "cpu_ms")
    lines = [
        "### attention: genjax against the faster of jax.nn and flax",
        "",
        f"Largest ratio of genjax's time to the faster of the other two over every group of "
        f"`attention.md`: median wall time {worst_wall:.2f}x ({at_wall}); median CPU time "
        f"{worst_cpu:.2f}x ({at_cpu}). Target: at most 1.05x. CPU time is this process's "
        "(all threads) per call; load from other processes on a shared machine stretches wall "
        "time but not the CPU time a call needs. Each attention row is the median of at least "
        f"the harness's repeats, and of as many calls as fit in about {SHORT_CALL_BUDGET_S:g} s "
        f"(at most {MAX_REPEATS}) for short calls.",
        "",
        "### attention: time vs sequence length",
        "",
        f"Least-squares fit of log t = p log L + c to the median times (batch {BATCH}, {HEADS} "
        f"heads, head_dim {HEAD_DIM}); the cost is O(L^2 d), so p -> 2 once the L^2 terms "
        "dominate.",
        "",
        *_fit_table(lengths, wall, "wall"),
        *_fit_table(lengths, cpu, "CPU")[2:],
        "",
        "### attention: CPU time and compiled programs",
        "",
        "Same program as genjax: XLA's optimised HLO equal after stripping metadata (source "
        "locations, op names). Bytes accessed: XLA's cost analysis.",
        "",
        "| group | implementation | wall vs best | median CPU ms | CPU vs best | "
        "same program as genjax | MB accessed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        mb = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
        lines.append(
            f"| {r['group']} | {r['name']} | {r['wall_vs_best']:.2f}x | {r['cpu_ms']:.1f} | "
            f"{r['cpu_vs_best']:.2f}x | {'yes' if r['same'] else 'no'} | {mb} |"
        )
    return "\n".join(lines) + "\n"


def _bench_train_step(h, label: str, options: dict, batch: int) -> None:
    data = load_dataset("digits")  # the loop's batch only sets the batch size
    task = recipe.make_char_task(load_dataset("pydoc_topics"), options)
    config = train.TrainConfig(steps=STEPS, batch_size=batch, log_every=STEPS, ema_decay=None)
    state, tx = train.init_state(task, config, data.train)
    flops, candidates = train_loop_candidates(task, config, tx, state, data.train)
    opts = {**recipe.CHAR_DEFAULTS, **options}
    group = (
        f"char Transformer train step, {label}: context {opts['context']}, width "
        f"{opts['features']}, {opts['num_layers']} layer(s), {opts['num_heads']} heads, batch "
        f"{batch}; {STEPS} steps"
    )
    h.measure(
        group,
        LOOP,
        candidates[LOOP],
        state,
        items=STEPS * batch * opts["context"],
        unit="tokens",
        flops=flops,
    )


def run(h, quick: bool) -> None:
    lengths = QUICK_LENGTHS if quick else LENGTHS
    wall, cpu, records = _bench_attention(h, lengths)
    table = _analysis(lengths, wall, cpu, records)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attention.analysis.md").write_text(table)
    print(table)
    for label, options, batch in TRAIN_CONFIGS[:1] if quick else TRAIN_CONFIGS:
        _bench_train_step(h, label, options, batch)
