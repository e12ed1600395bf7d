"""Markdown tables of ``bench.limits`` (the JSON holds everything, raw samples included)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .common import commit, versions
from .limits_measure import KIND_LABELS, KINDS

#: Targets: keyed enqueue rate / plain rate, and slot throughput / ideal.
TARGET_KEYED_RATIO = 0.8
TARGET_SLOT_SHARE = 0.9


def _fmt(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _row(label: str, s: Mapping[str, float], unit: str, decimals: int,
         scale: float = 1.0) -> str:
    return (f"| {label} | {_fmt(s['min'] * scale, decimals)} | "
            f"{_fmt(s['median'] * scale, decimals)} | {_fmt(s['max'] * scale, decimals)} | "
            f"{unit} |")


HEAD = ["| measurement | min | median | max | unit |", "|---|---:|---:|---:|---|"]


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def enqueue_section(e: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    s = e["summary"]
    lines = [
        "### 1. Enqueue rate: `apply_async` with a fresh idempotency key vs without",
        "",
        f"One producer thread, {config['repeats']} repeats × {config['rounds']} rounds of one "
        f"batch of {config['batch_size']} calls of each kind (order rotated each round), to "
        "a queue no worker consumes; results are dropped at once, as a fire-and-forget "
        "producer does (with the Redis result backend, each call SUBSCRIBEs to its result "
        "and the dropped AsyncResult UNSUBSCRIBEs). A repeat's figure is its median batch, "
        "a ratio's (and a difference's) the median of the per-round ones; the table shows "
        "min / median / max over repeats. Each round also times a batch of PINGs.",
        "",
        *HEAD,
    ]
    lines += [_row(KIND_LABELS[k], s[f"{k}_per_s"], "calls/s", 0) for k in KINDS]
    lines += [_row(f"{KIND_LABELS[k]}: wall time per call", s[f"{k}_wall_us"], "µs", 0)
              for k in KINDS]
    lines += [_row(f"{KIND_LABELS[k]}: producer CPU per call", s[f"{k}_cpu_us"], "µs", 0)
              for k in KINDS]
    lines += [
        _row("PING round trip (the store's client, same rounds)", s["ping_wall_us"], "µs", 0),
        _row("what the key adds: keyed − plain durable, per call", s["key_cost_us"], "µs", 0),
        _row("  the same in PING round trips", s["key_cost_per_ping"], "×", 2),
        _row("what recording the run adds: plain durable − plain Celery", s["record_cost_us"],
             "µs", 0),
        _row("  the same in PING round trips", s["record_cost_per_ping"], "×", 2),
        _row("what a rate turn adds: rated − plain durable, per call", s["rate_cost_us"],
             "µs", 0),
        _row("  the same in PING round trips", s["rate_cost_per_ping"], "×", 2),
        _row("**keyed / plain durable**", s["keyed_over_durable"], "×", 2),
        _row("rated / plain durable", s["rated_over_durable"], "×", 2),
        _row("**keyed / plain Celery**", s["keyed_over_celery"], "×", 2),
        _row("plain durable / plain Celery", s["durable_over_celery"], "×", 2),
        "",
        f"Target: keyed ≥ {TARGET_KEYED_RATIO}× plain. Against plain durable `apply_async`: "
        f"median {s['keyed_over_durable']['median']:.2f}× (repeats "
        f"{s['keyed_over_durable']['min']:.2f}–{s['keyed_over_durable']['max']:.2f}×): "
        f"{_met(s['keyed_over_durable']['median'] >= TARGET_KEYED_RATIO)}. Against plain "
        f"Celery: median {s['keyed_over_celery']['median']:.2f}×: "
        f"{_met(s['keyed_over_celery']['median'] >= TARGET_KEYED_RATIO)}.",
        "",
        "A rate limit's admission is one more round trip (`evalsha:rate` below); target: one "
        f"extra round trip, {_met(_one_rate_call(e))}.",
        "",
        "Redis commands per call (one batch of each kind under MONITOR; *sent* = commands the "
        "producer sends, a pipeline sends several in one round trip; *in script* = commands "
        "run by the Lua scripts it calls):",
        "",
        "| kind | sent per call | in scripts per call |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        per = e["commands_per_call"][kind]
        sent = ", ".join(f"{k.removeprefix('sent ')} {v:g}" for k, v in per.items()
                         if k.startswith("sent "))
        nested = ", ".join(f"{k.removeprefix('in script ')} {v:g}" for k, v in per.items()
                           if k.startswith("in script "))
        lines.append(f"| {KIND_LABELS[kind]} | {sent} | {nested or '–'} |")
    return lines


def _one_rate_call(e: Mapping[str, Any]) -> bool:
    """Whether a rated call sends exactly one command more than a plain durable one, and
    that command is rate.lua."""
    rated, plain = e["commands_per_call"]["rated"], e["commands_per_call"]["durable"]
    extra = {k: v - plain.get(k, 0) for k, v in rated.items() if k.startswith("sent ")}
    extra = {k: v for k, v in extra.items() if abs(v) > 0.05}
    return set(extra) == {"sent evalsha:rate"} and abs(extra["sent evalsha:rate"] - 1) < 0.05


def _optional_rows(s: Mapping[str, Any]) -> list[str]:
    rows = [
        ("after_body_ms", "  body end → `run_completed` (attempt ended; its slots released in the "
         "same round trip on one server)",
         "ms", 2),
        ("handover_ms_median", "  hand-over: k-th `run_completed` → (k+limit)-th "
         "`attempt_started`, median", "ms", 1),
        ("handover_ms_p90", "  hand-over, 90th percentile", "ms", 1),
        ("handover_ms_max", "  hand-over, longest", "ms", 0),
        ("before_body_ms", "  `attempt_started` → body start", "ms", 2),
        ("worker_cpu_ms_per_run", "worker CPU per run (both workers, parked attempts "
         "included)", "ms", 2),
        ("redis_cpu_ms_per_run", "redis-server CPU per run", "ms", 2),
    ]
    return [_row(label, s[key], unit, dec) for key, label, unit, dec in rows if key in s]


def _mmm(s: Mapping[str, float], decimals: int, scale: float = 1.0) -> str:
    return (f"{_fmt(s['median'] * scale, decimals)} ({_fmt(s['min'] * scale, decimals)}–"
            f"{_fmt(s['max'] * scale, decimals)})")


def _reference_table(sl: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    refs = sl.get("references") or {}
    if not refs:
        return []
    threads = config["limit"]
    columns = [("`limited`: limit 4, "
                f"{config['workers'] * config['concurrency']} threads", sl["summary"])]
    if "durable" in refs:
        columns.append((f"durable, no limit, {threads} threads", refs["durable"]["summary"]))
    if "plain" in refs:
        columns.append((f"plain Celery, {threads} threads", refs["plain"]["summary"]))
    rows = [("runs_per_s", "throughput (runs/s)", 1, 1.0),
            ("share_of_ideal", "share of the ideal (%)", 1, 100.0),
            ("steady_share_of_ideal", "steady state, share of ideal (%)", 1, 100.0),
            ("idle_slot_ms_per_run", "slot (thread) time lost per run (ms)", 2, 1.0),
            ("handover_ms_median", "hand-over, median (ms)", 1, 1.0),
            ("worker_cpu_ms_per_run", "worker CPU per run (ms)", 2, 1.0),
            ("redis_cpu_ms_per_run", "redis-server CPU per run (ms)", 2, 1.0)]
    lines = [
        "",
        f"The same body on reference workers with exactly {threads} threads in all and no "
        "limit (so at most as many at once, without parking), same repeats, interleaved: "
        "median (min–max).",
        "",
        "| | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key, label, decimals, scale in rows:
        lines.append(f"| {label} | " + " | ".join(
            _mmm(c[1][key], decimals, scale) if key in c[1] else "–" for c in columns) + " |")
    return lines + [""]


def slots_section(sl: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    s = sl["summary"]
    ideal = config["limit"] / config["sleep_s"]
    parked = [r["outcomes"]["parked_runs"] for r in sl["repeats"]]
    park_events = [r["outcomes"]["park_events"] / r["figures"]["runs"] for r in sl["repeats"]]
    first = [r["first_start_after_s"] for r in sl["repeats"]]
    enq = [r["enqueue_s"] for r in sl["repeats"]]

    def mm(values: Sequence[float]) -> dict[str, float]:
        data = sorted(values)
        return {"min": data[0], "median": data[len(data) // 2], "max": data[-1]}

    lines = [
        f"### 2. Slot utilisation: `concurrency_limit={config['limit']}`, body "
        f"{config['sleep_s'] * 1000:g} ms, {config['runs']} runs published at once",
        "",
        f"{config['workers']} worker processes `-P {config['pool']} -c {config['concurrency']}` "
        f"(`worker_prefetch_multiplier=1`): {config['workers'] * config['concurrency']} "
        f"threads for {config['limit']} slots. Each run's body is one step sleeping "
        f"{config['sleep_s'] * 1000:g} ms and notes its start and end (`time.time()`). "
        f"Ideal: {config['limit']} / {config['sleep_s']:g} s = {ideal:g} runs/s. "
        f"{config['repeats']} repeats (after a warm-up batch of the same size, in which "
        "every worker thread opens its connections).",
        "",
        *HEAD,
        _row("throughput, first body start → last body end", s["runs_per_s"], "runs/s", 1),
        _row("**share of the ideal**", s["share_of_ideal"], "%", 1, 100),
        _row("steady state (completions 25 % → 90 %), share of ideal",
             s["steady_share_of_ideal"], "%", 1, 100),
        _row("max bodies running at once (must be ≤ limit)", s["max_overlap"], "", 0),
        _row("body duration (median run)", s["body_ms_median"], "ms", 2),
        _row("slot time lost per run: (limit × window − Σ bodies) / runs",
             s["idle_slot_ms_per_run"], "ms", 2),
        *_optional_rows(s),
        _row("runs parked at least once", mm(parked), f"of {config['runs']}", 0),
        _row("parkings per run (`slot_denied` events)", mm(park_events), "", 2),
        _row("first body start after the worker threads are released", mm(first), "ms", 1,
             1000),
        _row(f"publishing the {config['runs']} runs (before the release)", mm(enq), "ms", 1,
             1000),
        *_reference_table(sl, config),
        f"Target: ≥ {TARGET_SLOT_SHARE:.0%} of the ideal throughput — median "
        f"{s['share_of_ideal']['median']:.1%} (repeats {s['share_of_ideal']['min']:.1%}–"
        f"{s['share_of_ideal']['max']:.1%}): "
        f"{_met(s['share_of_ideal']['median'] >= TARGET_SLOT_SHARE)}. Max overlap "
        f"{s['max_overlap']['max']:.0f} (limit {config['limit']}): "
        f"{_met(s['max_overlap']['max'] <= config['limit'])}.",
    ]
    return lines


def _level_table(levels: Mapping[str, Any], attr: str, first_col: str,
                 limit_rows: int = 40) -> list[str]:
    keys = list(levels)
    names = sorted({n for lv in keys for n in levels[lv][attr]},
                   key=lambda n: -max(levels[lv][attr].get(n, 0.0) for lv in keys))
    lines = [f"| {first_col} | " + " | ".join(f"{lv} parked" for lv in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for name in [n for n in names if any(levels[lv][attr].get(n, 0.0) >= 0.005
                                         for lv in keys)][:limit_rows]:
        lines.append(f"| {name} | " + " | ".join(
            f"{levels[lv][attr].get(name, 0.0):.2f}" for lv in keys) + " |")
    return lines


def _cpu_rows(levels: Mapping[Any, Any], keys: Sequence[str]) -> list[str]:
    by_key = {str(k): v for k, v in levels.items()}
    names = sorted({n for k in keys for n in by_key[k].get("cpu_percent", {})})
    return [f"| CPU of {name} (whole level) | " + " | ".join(
        f"{by_key[k].get('cpu_percent', {}).get(name, 0.0):.2f}" for k in keys)
        + " | % of one CPU |" for name in names]


def _total_row(levels: Mapping[str, Any]) -> Callable[[str, str, str], str]:
    """A table row of one total per level: median (min–max)."""

    def total(what: str, label: str, unit: str) -> str:
        return f"| {label} | " + " | ".join(
            f"{v[what]['median']:.1f} ({v[what]['min']:.1f}–{v[what]['max']:.1f})"
            for v in levels.values()) + f" | {unit} |"

    return total


def _left_out(sc: Mapping[str, Any]) -> str:
    """The sentence saying which commands the scaling figures leave out."""
    names = [name.upper() for name in sc.get("left_out", [])]
    if not names:
        return ""
    return (f" The scaling figures leave out {', '.join(names)}: redis-py's health check of a "
            "connection idle for 30 s, sent at fixed times whatever waits (it is in the "
            "tables above).")


def polling_section(p: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    levels = {str(k): v["summary"] for k, v in p["levels"].items()}
    keys = list(levels)
    sc, resume = p["scaling"], p["resume"]
    total = _total_row(levels)

    low, top = sc["compared"]
    lines = [
        "### 3. Parked runs: no busy polling",
        "",
        f"Limit paused with `DurableClient(app).set_concurrency_limit(name, 0)`; runs published "
        f"until {', '.join(keys)} are parked (each level measured once every run is parked "
        f"and the broker holds none of their messages, after {config['settle_s']:g} s). At "
        f"each level, {config['windows']} consecutive windows of {config['window_s']:g} s "
        "between two `INFO commandstats`, with MONITOR running. Figures are per second, "
        "median (min–max) over the windows, whole server (both workers and this process; "
        "the benchmark's own INFO/ECHO left out).",
        "",
        "| per second | " + " | ".join(f"{k} parked" for k in keys) + " | unit |",
        "|---|" + "---:|" * len(keys) + "---|",
        total("top_level_total", "commands sent by clients (MONITOR)", "commands/s"),
        total("all_commands_total", "commands executed (`INFO commandstats`, with "
              "script-internal ones)", "commands/s"),
        total("in_scripts_total", "of which inside Lua scripts (MONITOR)", "commands/s"),
        total("redis_usec_total", "Redis time (commandstats usec)", "µs/s"),
        *_cpu_rows(p["levels"], keys),
        "",
        "`INFO commandstats` by command (calls/s, medians; script-internal calls included):",
        "",
        *_level_table(levels, "calls", "command"),
        "",
        "Commands sent, by process (MONITOR, client port mapped to its process through "
        "`/proc`):",
        "",
        *_level_table(levels, "by_source", "process"),
        "",
        "Commands sent, by process and command (EVALSHA named by script):",
        "",
        *_level_table(levels, "by_source_command", "process and command"),
        "",
        "Commands run inside Lua scripts, by script:",
        "",
        *_level_table(levels, "in_scripts", "script: command"),
        "",
    ]
    per = sc["top_level_total"]["per_parked_run"]
    per_all = sc["all_commands_total"]["per_parked_run"]
    per_us = sc["redis_usec_total"]["per_parked_run"]
    resumed_ok = resume["completed"] == resume["runs"] and resume["max_overlap"] <= config["limit"]
    handover = resume["figures"].get("handover_ms_median")
    handover_text = (f", hand-over median {handover:.1f} ms / longest "
                     f"{resume['figures']['handover_ms_max']:.0f} ms" if handover is not None
                     else "")
    grew = ", ".join(f"{k} +{v:g}/s" for k, v in sc["grew"].items()) or "nothing"
    lines += [
        f"Scaling with the number of parked runs ({low} → {top} parked, both past the "
        f"constant cost of a limit with waiting runs): {per:+.4f} commands sent/s and "
        f"{per_all:+.4f} executed/s per parked run, {per_us:+.3f} "
        f"µs/s of Redis time per parked run; {sc['zero']} → {top} parked: "
        f"{sc['top_level_total']['vs_zero']:+.2f} sent/s, "
        f"{sc['all_commands_total']['vs_zero']:+.2f} executed/s. Commands whose rate grew "
        f"by more than {sc['threshold_per_s'] / 2:g}/s from {low} to {top}: {grew}. "
        f"Busy polling (more than {sc['threshold_per_s']:g} command/s added from {low} to "
        f"{top} parked): **{'yes' if sc['busy_polling'] else 'no'}**.{_left_out(sc)}",
        "",
        f"Resumed with `set_concurrency_limit(name, {config['limit']})`: "
        f"{resume['completed']} of {resume['runs']} runs completed "
        f"({', '.join(f'{k} {v}' for k, v in resume['outcomes']['statuses'].items())}), the "
        f"first body started {resume['first_start_after_s'] * 1000:.0f} ms after the call, "
        f"the last ended {resume['all_done_after_s']:.2f} s after it "
        f"({resume['figures']['runs_per_s']:.1f} runs/s, "
        f"{resume['figures']['share_of_ideal']:.1%} of ideal{handover_text}); max overlap "
        f"{resume['max_overlap']} (limit {config['limit']}); slots held / runs parked "
        f"afterwards: {resume['limit_after'][0]} / {resume['limit_after'][1]}: "
        f"{_met(resumed_ok)}.",
    ]
    return lines


def rate_polling_section(p: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    levels = {str(k): v["summary"] for k, v in p["levels"].items()}
    keys = list(levels)
    sc, resume = p["scaling"], p["resume"]
    total = _total_row(levels)

    low, top = sc["compared"]
    per_all = sc["all_commands_total"]["per_parked_run"]
    grew = ", ".join(f"{k} +{v:g}/s" for k, v in sc["grew"].items()) or "nothing"
    first, last = resume["first_start_after_s"], resume["all_started_after_s"]
    started = (f"the first waiting run started {first * 1000:.0f} ms after the call, the "
               f"last {last:.2f} s after it" if first is not None else "no run was waiting")
    return [
        "### 4. Runs waiting for a rate turn: no busy polling",
        "",
        "A rate limit of one start an hour (`rate_limit=\"1/h\"`): a first run takes the "
        f"hour's turn, then runs published until {', '.join(keys)} wait in the limit's "
        "queue. Windows and figures as in 3 (per second, median (min–max), whole server).",
        "",
        "| per second | " + " | ".join(f"{k} waiting" for k in keys) + " | unit |",
        "|---|" + "---:|" * len(keys) + "---|",
        total("top_level_total", "commands sent by clients (MONITOR)", "commands/s"),
        total("all_commands_total", "commands executed (with script-internal ones)",
              "commands/s"),
        total("redis_usec_total", "Redis time (commandstats usec)", "µs/s"),
        "",
        "Commands sent, by process and command (EVALSHA named by script):",
        "",
        *_level_table(levels, "by_source_command", "process and command"),
        "",
        f"Scaling with the number of waiting runs ({low} → {top}): {per_all:+.4f} commands "
        f"executed/s per waiting run; commands whose rate grew by more than "
        f"{sc['threshold_per_s'] / 2:g}/s: {grew}. Busy polling: "
        f"**{'yes' if sc['busy_polling'] else 'no'}**.{_left_out(sc)}",
        "",
        f"Rate raised at runtime to 1000/s (`set_rate_limit`): {resume['completed']} of "
        f"{resume['runs']} runs completed, {started}; runs still waiting afterwards: "
        f"{resume['waiting_after']}.",
    ]


def render_markdown(result: Mapping[str, Any]) -> str:
    config, machine = result["config"], result["machine"]
    lines = [
        f"## celery-durable limits benchmark ({machine['date_utc']})",
        "",
        f"{versions(machine, 'python', 'redis_server', 'redis_py', 'celery', 'kombu')}; "
        f"{machine['cpu_count']} CPUs, load {machine['loadavg_at_start']} at start; commit "
        f"{commit(machine)}; {config['wall_time_s']:.0f} s.",
        "",
    ]
    if "enqueue" in result:
        lines += enqueue_section(result["enqueue"], config) + [""]
    if "slots" in result:
        lines += slots_section(result["slots"], config) + [""]
    if "polling" in result:
        lines += polling_section(result["polling"], config) + [""]
    if "rate_polling" in result:
        lines += rate_polling_section(result["rate_polling"], config) + [""]
    errors = result.get("worker_errors") or []
    lines.append(f"Worker log errors: {len(errors)}." + (
        " First ones: " + "; ".join(f"`{e[:160]}`" for e in errors[:5]) if errors else ""))
    return "\n".join(lines) + "\n"
