//! The study's table, Markdown report and CSV.

use std::fmt::Write as _;
use std::time::Duration;

use crate::multi::MultiOutcome;
use crate::server::{Form, Mode};
use crate::stats;
use crate::study::{Phase, StudyConfig, Summary, buckets};

fn fmt_rps(x: f64) -> String {
    format!("{x:.0}")
}

fn fmt_ms(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// The poll or job budget that governs the attack's form.
fn budget(cfg: &StudyConfig, form: Form) -> Duration {
    match form {
        Form::Inline => cfg.server.poll_budget,
        Form::Pool => cfg.server.job_budget,
    }
}

/// Whether a phase met the design target for benign clients under attack:
/// at least 90% of the attack-free throughput, and a p99 within the budget
/// plus the attack-free p99.
pub fn target_met(cfg: &StudyConfig, phase: &Phase, s: &Summary) -> bool {
    let b = budget(cfg, phase.attack.form).as_secs_f64() * 1e3;
    s.attack_rps >= 0.9 * s.base_rps && s.p99_ms <= b + s.base_p99_ms
}

/// The runs of each attack against each mode, in the order first run.
pub fn groups(phases: &[Phase]) -> Vec<Vec<&Phase>> {
    let mut out: Vec<Vec<&Phase>> = Vec::new();
    for p in phases {
        match out
            .iter_mut()
            .find(|g| g[0].mode == p.mode && g[0].attack.label == p.attack.label)
        {
            Some(g) => g.push(p),
            None => out.push(vec![p]),
        }
    }
    out
}

fn share(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| 100.0 * part / whole)
}

/// The benign throughput during the window as a % of the baseline.
fn window_share(s: &Summary) -> Option<f64> {
    share(s.attack_rps, s.base_rps)
}

/// Capacity after the attack: the throughput in the recovery window as a %
/// of the baseline.
fn after_share(s: &Summary) -> Option<f64> {
    share(s.recovery_rps, s.base_rps)
}

/// The median run of a group of repeats, by the window/base share (the
/// lower middle one for an even count).
pub fn median_phase<'a>(group: &[&'a Phase]) -> &'a Phase {
    let mut v: Vec<(f64, &Phase)> = group
        .iter()
        .map(|p| (window_share(&p.summary()).unwrap_or(f64::NEG_INFINITY), *p))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v[(v.len() - 1) / 2].1
}

/// `median%`, or `median% (lowest-highest)` over several runs.
fn share_cell(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    match (stats::percentile(&v, 0.5), v.first(), v.last()) {
        (Some(m), Some(lo), Some(hi)) if v.len() > 1 => format!("{m:.0}% ({lo:.0}-{hi:.0})"),
        (Some(m), _, _) => format!("{m:.0}%"),
        _ => "-".to_owned(),
    }
}

/// A phase whose load generator ran a 10 ms timer this late is flagged:
/// its clients stalled, not (only) the server.
const LAG_WARN_MS: f64 = 100.0;

const HEADER: [&str; 23] = [
    "attack",
    "mode",
    "base/s",
    "attack/s",
    "%",
    "recov/s",
    "after %",
    "p50 ms",
    "p99 ms",
    "max ms",
    "err/sent",
    "target",
    "attacker got",
    "answer p50",
    "timeouts ev/pool",
    "hijacked ev/pool",
    "max hij/overdue",
    "peak RSS",
    "threads",
    "drain",
    "client lag",
    "others' CPU",
    "recycled/killed",
];

/// One row for the runs of one attack against one mode: the median run's
/// numbers, with the window and after shares as median (range).
fn row(cfg: &StudyConfig, group: &[&Phase]) -> Vec<String> {
    let p = median_phase(group);
    let s = p.summary();
    let sums: Vec<Summary> = group.iter().map(|p| p.summary()).collect();
    let timeout_ms = cfg.benign_timeout.as_secs_f64() * 1e3;
    let p99 = if s.p99_ms >= timeout_ms - 1.0 {
        format!("≥{}", fmt_ms(timeout_ms))
    } else {
        fmt_ms(s.p99_ms)
    };
    let pct = share_cell(sums.iter().filter_map(window_share).collect());
    let after = share_cell(sums.iter().filter_map(after_share).collect());
    let (timeouts, hijacked, max) = match &p.curfew {
        Some(c) => (
            format!("{}/{}", c.event_timeouts, c.pool_timeouts),
            format!("{}/{}", c.event_hijacked, c.pool_hijacked),
            format!("{}/{}", c.max_hijacked_now, c.max_overdue),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let drain = format!("{:.1} s", p.shutdown.took.as_secs_f64());
    let mut threads = format!(
        "{} (+{})",
        p.peak.threads,
        p.peak.threads.saturating_sub(p.before.threads)
    );
    if p.shutdown.handlers_left > 0 {
        let _ = write!(threads, " {} stuck", p.shutdown.handlers_left);
    }
    vec![
        p.attack.label.clone(),
        p.mode.to_string(),
        fmt_rps(s.base_rps),
        fmt_rps(s.attack_rps),
        pct,
        fmt_rps(s.recovery_rps),
        after,
        fmt_ms(s.p50_ms),
        p99,
        fmt_ms(s.max_ms),
        format!("{}/{}", s.errors, s.sent),
        if target_met(cfg, p, &s) { "yes" } else { "no" }.to_owned(),
        s.answers.clone(),
        s.answer_p50_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{} ms", fmt_ms(ms))),
        timeouts,
        hijacked,
        max,
        format!("{:.0} MiB", p.peak.rss_mib()),
        threads,
        drain,
        {
            let ms = p.client_lag.as_secs_f64() * 1e3;
            let flag = if ms > LAG_WARN_MS { " ⚠" } else { "" };
            format!("{} ms{flag}", fmt_ms(ms))
        },
        format!("{:.1} cores", p.others_cores),
        p.supervisor.map_or_else(
            || "-".to_owned(),
            |c| format!("{}/{}", c.recycled, c.killed_while_draining),
        ),
    ]
}

/// An aligned table, as text or Markdown; columns in `left` are left
/// aligned, the others right aligned.
fn render(header: &[&str], left: &[usize], rows: &[Vec<String>], markdown: bool) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let pad = " ".repeat(widths[c].saturating_sub(s.chars().count()));
                if left.contains(&c) {
                    format!("{s}{pad}")
                } else {
                    format!("{pad}{s}")
                }
            })
            .collect();
        if markdown {
            format!("| {} |\n", padded.join(" | "))
        } else {
            format!("{}\n", padded.join("  ").trim_end())
        }
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    if markdown {
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, w)| {
                if left.contains(&c) {
                    "-".repeat((*w).max(3))
                } else {
                    format!("{}:", "-".repeat((*w).max(3) - 1))
                }
            })
            .collect();
        out += &format!("| {} |\n", rule.join(" | "));
    }
    for r in rows {
        out += &line(r);
    }
    out
}

/// One row per attack and mode (the median of its runs).
fn phase_table(cfg: &StudyConfig, phases: &[Phase], markdown: bool) -> String {
    let rows: Vec<_> = groups(phases).iter().map(|g| row(cfg, g)).collect();
    render(&HEADER, &[0, 1, 12], &rows, markdown)
}

/// One row per mode: how the benign clients and the attacker fared across
/// all attacks.
fn mode_table(cfg: &StudyConfig, phases: &[Phase], markdown: bool) -> String {
    let header = [
        "mode",
        "attacks",
        "window/base: median (min)",
        "after/base: median (min)",
        "worst p99 ms",
        "benign errors in",
        "target met",
        "attacks answered",
        "median answer",
    ];
    let mut rows = Vec::new();
    let mut modes = cfg.modes.clone();
    modes.dedup();
    for (i, &mode) in modes.iter().enumerate() {
        if modes[..i].contains(&mode) {
            continue;
        }
        // Each attack counts once, by its median run.
        let ps: Vec<&Phase> = groups(phases)
            .iter()
            .filter(|g| g[0].mode == mode)
            .map(|g| median_phase(g))
            .collect();
        if ps.is_empty() {
            continue;
        }
        let sums: Vec<Summary> = ps.iter().map(|p| p.summary()).collect();
        let mut pct: Vec<f64> = sums.iter().filter_map(window_share).collect();
        pct.sort_by(f64::total_cmp);
        let mut after: Vec<f64> = sums.iter().filter_map(after_share).collect();
        after.sort_by(f64::total_cmp);
        let worst = sums.iter().map(|s| s.p99_ms).fold(f64::NAN, f64::max);
        let timeouts = sums.iter().filter(|s| s.errors > 0).count();
        let met = ps
            .iter()
            .zip(&sums)
            .filter(|(p, s)| target_met(cfg, p, s))
            .count();
        let sent: usize = sums.iter().map(|s| s.attacks).sum();
        let answered: usize = sums.iter().map(|s| s.answered).sum();
        let mut times: Vec<f64> = ps
            .iter()
            .flat_map(|p| p.attacks.iter())
            .filter(|a| a.status.is_some())
            .map(|a| a.latency * 1e3)
            .collect();
        times.sort_by(f64::total_cmp);
        rows.push(vec![
            mode.to_string(),
            ps.len().to_string(),
            match (stats::percentile(&pct, 0.5), pct.first()) {
                (Some(m), Some(lo)) => format!("{m:.0}% ({lo:.0}%)"),
                _ => "-".to_owned(),
            },
            match (stats::percentile(&after, 0.5), after.first()) {
                (Some(m), Some(lo)) => format!("{m:.0}% ({lo:.0}%)"),
                _ => "-".to_owned(),
            },
            fmt_ms(worst),
            format!("{timeouts} of {}", ps.len()),
            format!("{met} of {}", ps.len()),
            format!("{answered} of {sent}"),
            stats::percentile(&times, 0.5)
                .map_or_else(|| "-".to_owned(), |ms| format!("{} ms", fmt_ms(ms))),
        ]);
    }
    render(&header, &[0], &rows, markdown)
}

/// The results as aligned text tables: one row per mode, then one per
/// phase.
pub fn table(cfg: &StudyConfig, phases: &[Phase]) -> String {
    format!(
        "{}\n{}",
        mode_table(cfg, phases, false),
        phase_table(cfg, phases, false)
    )
}

/// The per-bucket time series as CSV.
pub fn csv(cfg: &StudyConfig, phases: &[Phase]) -> String {
    let mut out =
        String::from("attack,mode,repeat,bucket_start_s,rps,p99_ms,errors,in_attack_window\n");
    for p in phases {
        for b in buckets(p, cfg.bucket) {
            let in_window = b.start >= p.window_start - 1e-9 && b.start < p.window_end - 1e-9;
            let _ = writeln!(
                out,
                "{},{},{},{:.3},{:.1},{},{},{}",
                p.attack.label,
                p.mode,
                p.repeat,
                b.start,
                b.rps,
                b.p99_ms.map_or_else(String::new, |v| format!("{v:.3}")),
                b.errors,
                in_window
            );
        }
    }
    out
}

fn mode_text(mode: Mode, cfg: &StudyConfig) -> String {
    let s = &cfg.server;
    match mode {
        Mode::Tokio => format!(
            "a tokio multi-thread runtime with {} workers; one task per connection, and the \
             handler runs inline in it (pool form: `tokio::task::spawn_blocking`, 512 threads \
             at most, as `tokio::fs` uses)",
            s.threads
        ),
        Mode::Curfew => format!(
            "`curfew_http::serve` + `CurfewLayer` on a curfew runtime with {} event threads \
             (poll budget {:?}): every connection and every request a curfew task, driven by \
             the runtime's own I/O driver; {} pool threads (job budget {:?}); caps on \
             hijacked/abandoned threads: {}/{}",
            s.threads,
            s.poll_budget,
            s.blocking_threads,
            s.job_budget,
            s.max_hijacked_threads
                .map_or_else(|| format!("{} (default)", 4 * s.threads), |n| n.to_string()),
            s.max_abandoned_threads.map_or_else(
                || format!("{} (default)", 4 * s.blocking_threads),
                |n| n.to_string()
            ),
        ),
        Mode::CurfewPolicy => format!(
            "as `curfew`, plus a client policy: a client whose requests time out {} times is \
             refused for {:?} (the paper's recommended pairing of timeouts with a blacklist)",
            s.strikes, s.cool_off
        ),
        Mode::CurfewSupervised => "as `curfew`, served by `curfew-lab serve --processes 1` in a \
             child process: one worker process and a warm spare under `curfew-supervisor`, \
             which recycles the worker at its first written-off thread (the spare serves at \
             once, the poisoned worker finishes its other requests, then is killed with its \
             spinning threads; drain deadline 2 s). The load generator no longer shares the \
             server's process; the peak RSS and thread columns are the load generator's own, and \
             the others' CPU column includes the server's processes"
            .to_owned(),
    }
}

/// The Markdown report.
pub fn markdown(
    cfg: &StudyConfig,
    phases: &[Phase],
    multi: Option<&MultiOutcome>,
    elapsed: Duration,
    load: &(String, String),
) -> String {
    if phases.is_empty() {
        let mut out = format!(
            "# Event handler poisoning across instances\n\n{:.0} s in all (load average {} at \
             the start, {} at the end).\n\n",
            elapsed.as_secs_f64(),
            load.0,
            load.1
        );
        if let Some(m) = multi {
            out += &m.table(true);
        }
        return out;
    }
    let mut out = markdown_attacks(cfg, phases, elapsed, load);
    if let Some(m) = multi {
        out.push('\n');
        out += &m.table(true);
    }
    out
}

fn markdown_attacks(
    cfg: &StudyConfig,
    phases: &[Phase],
    elapsed: Duration,
    load: &(String, String),
) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "# Event handler poisoning: tokio and curfew under real attacks\n\n\
         {} attacks × {} modes on {cores} cores, {:.0} s in all (load average {} at the \
         start, {} at the end). Each phase is a fresh server on 127.0.0.1: {:?} of benign \
         load, a {:?} attack window, {:?} of recovery. Each attack runs {} time(s) against \
         each mode; the tables show the median run.\n",
        cfg.attacks.len(),
        cfg.modes.len(),
        elapsed.as_secs_f64(),
        load.0,
        load.1,
        cfg.baseline,
        cfg.window,
        cfg.recovery,
        cfg.repeats.max(1),
    );
    out += "## Summary\n\n";
    out += &mode_table(cfg, phases, true);
    out += "\nAcross the attacks: the benign throughput during the attack window as a share \
            of the throughput before it (median and lowest), the capacity after the attack (the \
            throughput in the recovery window as a share of the baseline; median and lowest), \
            the worst benign p99, in how many \
            attacks some benign requests failed or timed out, in how many the design target held \
            (see below), how many attack requests got any answer before their phase ended, and \
            the median time to that answer.\n\n";
    out += "## Results\n\n";
    out += &phase_table(cfg, phases, true);
    out +=
        "\n![Benign throughput and p99 latency over time; attack windows shaded](timeline.svg)\n\n";
    out += "Columns: benign `200` answers per second before (`base/s`), during (`attack/s`, \
            and `%` of base) and after (`recov/s`, and `after %` of base: the capacity after \
            the attack) the attack window, the shares as the median over the runs with their \
            range in brackets, the other columns from the median run; p50 and p99 latency of \
            the benign requests sent during the window, corrected for coordinated omission (a \
            request that waited `L` also stands for the requests its client would have sent \
            meanwhile, one per baseline mean latency, as HdrHistogram does), where a request \
            unanswered after the benign timeout counts as the timeout (so `≥` means at least \
            1% waited that long); \
            benign requests that failed or timed out, of those sent in the window; `target`: \
            whether the window kept at least 90% of the base throughput with a p99 within the \
            budget plus the base p99; what the attacker's requests got before the phase ended, \
            and the median time to an answer; curfew's timeouts, hijacked (event) and abandoned \
            (pool) threads, and the most of them at once / the most overdue (not replaced, cap \
            reached); the process's peak RSS and thread count (and growth during the phase); \
            how long the lab then waited for the phase's handlers to return after letting \
            them go (see below); how late the load generator's runtime ran a 10 ms timer at \
            worst (`⚠` past 100 ms: the clients themselves stalled, so the row says more about \
            the machine than about the server); how many cores other processes on the \
            machine kept busy during the phase; and, in `curfew-supervised` mode, the worker \
            processes recycled and those killed at the drain deadline.\n\n";

    out += "## Setup\n\n";
    for &m in &cfg.modes {
        let _ = writeln!(out, "- **{m}**: {}.", mode_text(m, cfg));
    }
    let _ = writeln!(
        out,
        "- **Benign load**: {} keep-alive connections, closed loop (like `ab -k`), half \
         `GET /hello` (an async handler), half `GET /file` (a 4 KiB read on the blocking \
         pool); a request unanswered after {:?} is counted as timed out and its client \
         reconnects. Each benign client has its own client id.",
        cfg.connections, cfg.benign_timeout
    );
    out += "- **Attacker**: open loop, one new connection per request, client id `attacker`, \
            at a fixed rate from the start to the end of the window; it waits for answers \
            until the phase ends.\n";
    out += "- Client and server share this one process and its cores (except in \
            `curfew-supervised` mode, where the server is a child process): every figure includes \
            the load generator's own CPU use, and only the comparison between modes is \
            meaningful. Other work on the machine shows up too (see the load average above): \
            a dip or a stall of some hundred milliseconds outside an attack window, or in a \
            baseline, is not the server's doing, and single phases can differ by a third in \
            baseline throughput.\n\n";
    out += "## Attacks\n\n";
    for a in &cfg.attacks {
        let _ = writeln!(
            out,
            "- **{}**: {}. Vulnerable: {}; growth {}.",
            a.label,
            a.describe(),
            a.vector.vulnerable,
            a.vector.growth
        );
    }
    out += "\n## How the lab keeps a poisoned server from poisoning the study\n\n\
        - Every phase gets its own server, on its own runtimes and threads, and is bounded in \
          time; benign requests time out, and the attacker stops waiting when the phase ends.\n\
        - **ReadDoS** reads a FIFO that nobody writes to: the reader blocks in `open(2)` and \
          holds its thread without CPU. After the phase, the lab opens the FIFO read-write \
          (which lets every blocked reader through), unlinks it and closes it, so every read \
          ends at once with end of file.\n\
        - **The infinite loop** is the corpus's loop (a client-chosen iteration count, here \
          `usize::MAX`), with one change: every 64 Ki iterations it also looks at a stop flag \
          that only the lab sets, after the phase. Neither runtime can see the flag (it is not \
          a curfew checkpoint), so during the phase the loop is as hostile to curfew as to \
          tokio and a curfew timeout leaves it spinning on its hijacked thread. Without the \
          flag a poisoned tokio worker would spin until the process exits, burning a core \
          through every later phase.\n\
        - CPU vectors run at sizes that cost about 0.5 to 1 s of CPU a request on the \
          2-core reference machine (5 to 10 times the poll budget); they finish on their own, \
          and the lab waits for them (up to the drain bound) before the next phase.\n\
        - After stopping a server, the lab waits until no handler body is running, so no \
          phase burns CPU in the next one; a row says `stuck` if one was still running.\n\n";
    out += "## Reading the results\n\n\
        - **tokio**: a handler that runs long holds a worker. With as many attack requests in \
          flight as workers, nothing else is served, not even `accept`: benign throughput \
          falls to about zero until the attack work is done. Blocking I/O on the blocking \
          pool (`form=pool`) spares the benign clients but leaks one blocked thread per \
          attack request, up to 512, and the attacker never gets an answer.\n\
        - **curfew**: the watchdog answers the attacker `503` with `Retry-After` once the \
          budget is spent, while the handler is still running, and replaces its thread, so \
          the benign clients keep their capacity. The stuck thread is not killed: Rust cannot \
          interrupt it safely. A blocked thread costs memory only; a thread spinning in a CPU \
          vector keeps running until the handler returns. Curfew moves it to the idle \
          scheduling class (on Linux), so it only gets CPU the healthy threads leave, and \
          therefore takes longer to finish; CPU comes back early only where code reaches \
          `curfew::checkpoint`. At the cap on hijacked threads a poisoned thread is no longer \
          replaced (`overdue`): with no healthy event thread left, queued tasks, benign ones \
          included, wait unanswered until a hijacked thread returns (`no answer` rows).\n\
        - **curfew-policy**: a client whose requests keep timing out is refused at once for \
          the cool-off, before any of its work runs: `CurfewLayer` answers it `429` with the \
          cool-off left from its headers alone, so the attacker's cost to the server drops to \
          reading one request head; its body, a multi-megabyte payload (gzip-bomb) included, \
          is never read.\n";
    out
}
