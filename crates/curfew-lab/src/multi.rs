//! The multi-instance phase: two servers, one attacker who alternates
//! between them and rotates identities.
//!
//! A real service runs on more than one instance. With a client table per
//! instance, an attacker who spreads its poisoned requests over N instances
//! gets N times the strikes before anyone refuses it. The phase measures
//! that, and what a policy shared through Redis (`serve --policy-store`)
//! changes:
//!
//! 1. It starts its own `redis-server` on a free port of 127.0.0.1
//!    ([`curfew_redis::testing::RedisServer`]). Without the binary the
//!    phase is skipped with a one-line reason; the rest of the study runs.
//! 2. For each variant it starts two `curfew-lab serve --mode curfew-policy
//!    --trust-client-header` child processes on two ports:
//!    [`Variant::Memory`], each with its own in-memory policy, and
//!    [`Variant::Shared`], both with `--policy-store` on that Redis.
//! 3. It runs the same load against both variants: benign keep-alive
//!    clients on both instances (calm, then during the attack), and an
//!    open-loop attacker who sends a poisoned request at a fixed rate,
//!    alternating between the instances, and rotating through a pool of
//!    identities. Identity `i` is the `x-client-id` `…-atk-i` and the
//!    source address `127.0.9.(i+1)` (so a server that keys clients by
//!    address sees distinct peers of one /24). Request `j` goes to instance
//!    `j mod 2` as identity `(j / 2) mod identities`: each identity hits
//!    both instances in turn.
//! 4. After the attack window it measures how long a cool-off takes to
//!    reach the other instance, directly: a fresh probe identity sends
//!    poisoned requests to one instance until its strikes are spent (the
//!    answer to the last one is the moment the cool-off lands there), then
//!    asks the other instance for `GET /hello` every 2 ms as the same
//!    identity, until it is refused (`429`) or the bound runs out.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use indicatif::ProgressBar;

use crate::load::{self, BenignOutcome, BenignSample, Route};
use crate::server::{Mode, ServerConfig};
use crate::stats;
use crate::study::{self, AttackSpec, ChildServer, Payload, StudyConfig};

/// The multi-instance phase's settings.
#[derive(Debug, Clone)]
pub struct MultiConfig {
    /// The poisoned request: a CPU attack that finishes by itself, so that
    /// the threads it holds come back without the lab's help.
    pub attack: AttackSpec,
    /// The attacker's identities, used in turn.
    pub identities: usize,
    /// Benign load alone, on both instances, before the attack: the calm
    /// baseline.
    pub baseline: Duration,
    /// How long the attacker sends (at `attack.rate`, over both instances).
    pub window: Duration,
    /// Cool-off propagation probes after the window.
    pub probes: usize,
    /// How long a probe waits for the other instance to refuse.
    pub probe_bound: Duration,
    /// The command that reproduces the phase, for the report.
    pub command: String,
}

impl MultiConfig {
    /// The full phase: 4 identities, 4 poisoned requests a second over both
    /// instances for 8 s, 5 propagation probes.
    pub fn full() -> Self {
        let mut attack = study::attack("fancy-regex").expect("fancy-regex is in the catalog");
        attack.rate = 4.0;
        Self {
            attack,
            identities: 4,
            baseline: Duration::from_millis(1500),
            window: Duration::from_secs(8),
            probes: 5,
            probe_bound: Duration::from_secs(2),
            command: "cargo run --release -p curfew-lab -- study --phases multi-instance".into(),
        }
    }

    /// The quick phase: as [`full`](Self::full), with a 4 s window (each
    /// identity meets each instance twice) and 2 probes of at most 1 s.
    pub fn quick() -> Self {
        Self {
            baseline: Duration::from_millis(800),
            window: Duration::from_secs(4),
            probes: 2,
            probe_bound: Duration::from_secs(1),
            command: "cargo run --release -p curfew-lab -- study --quick --phases multi-instance"
                .into(),
            ..Self::full()
        }
    }
}

/// Where the two instances keep their policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Each instance has its own in-memory client table.
    Memory,
    /// Both share strikes, cool-offs and quotas through one Redis.
    Shared,
}

impl Variant {
    /// The name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Memory => "per-instance memory",
            Variant::Shared => "shared Redis",
        }
    }
}

/// One poisoned request of the attack.
#[derive(Debug, Clone, PartialEq)]
pub struct Shot {
    /// The instance it went to (0 or 1).
    pub instance: usize,
    /// The identity it used.
    pub identity: usize,
    /// What it got.
    pub sample: load::AttackSample,
}

/// One cool-off propagation probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// The instance the probe identity was poisoned on.
    pub from: usize,
    /// Whether that instance put it into cool-off (its strikes answered
    /// `503`, or it was refused).
    pub landed: bool,
    /// How long after the cool-off landed the other instance first refused
    /// the identity; `None` if it did not within the bound.
    pub reached: Option<Duration>,
    /// Whether the first instance itself refused the identity afterwards.
    pub refused_at_origin: bool,
}

/// One run of the phase: one variant, both instances.
#[derive(Debug, Clone)]
pub struct MultiRun {
    /// Where the policy lived.
    pub variant: Variant,
    /// Which run of this variant (0, 1, ...).
    pub repeat: usize,
    /// Every benign request, on both instances, in seconds from the start.
    pub benign: Vec<BenignSample>,
    /// Every poisoned request.
    pub shots: Vec<Shot>,
    /// When the attack window opened, in seconds from the start.
    pub window_start: f64,
    /// When it closed (the benign load stops then too).
    pub window_end: f64,
    /// The propagation probes.
    pub propagation: Vec<Propagation>,
    /// Server processes that did not end by themselves when asked.
    pub handlers_left: usize,
}

/// The numbers of a run that the table shows.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiSummary {
    /// Poisoned requests sent.
    pub sent: usize,
    /// Of those, admitted: their handler ran until the watchdog answered
    /// `503` (timeout).
    pub admitted: usize,
    /// Refused (`429`) before their handler ran.
    pub refused: usize,
    /// Anything else (another status, a connection error, no answer).
    pub other: usize,
    /// Benign answers per second over both instances before the attack.
    pub calm_rps: f64,
    /// The same during the attack window.
    pub attack_rps: f64,
    /// Benign requests sent in the window.
    pub benign_sent: usize,
    /// Of those, failed or timed out.
    pub benign_errors: usize,
    /// The propagation times that were seen, sorted, ms.
    pub reached_ms: Vec<f64>,
    /// Probes whose cool-off landed on their first instance.
    pub landed: usize,
}

impl MultiRun {
    /// The table's numbers for this run.
    pub fn summary(&self) -> MultiSummary {
        let warm = (self.window_start / 4.0).min(0.25);
        let ok_between = |a: f64, b: f64| {
            self.benign
                .iter()
                .filter(|s| s.outcome == BenignOutcome::Ok && s.done() >= a && s.done() < b)
                .count() as f64
                / (b - a).max(1e-9)
        };
        let in_window: Vec<_> = self
            .benign
            .iter()
            .filter(|s| s.sent >= self.window_start && s.sent < self.window_end)
            .collect();
        let status = |code: u16| {
            self.shots
                .iter()
                .filter(|s| s.sample.status == Some(code))
                .count()
        };
        let (admitted, refused) = (status(503), status(429));
        let mut reached_ms: Vec<f64> = self
            .propagation
            .iter()
            .filter_map(|p| p.reached)
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        reached_ms.sort_by(f64::total_cmp);
        MultiSummary {
            sent: self.shots.len(),
            admitted,
            refused,
            other: self.shots.len() - admitted - refused,
            calm_rps: ok_between(warm, self.window_start),
            attack_rps: ok_between(self.window_start, self.window_end),
            benign_sent: in_window.len(),
            benign_errors: in_window
                .iter()
                .filter(|s| s.outcome != BenignOutcome::Ok)
                .count(),
            reached_ms,
            landed: self.propagation.iter().filter(|p| p.landed).count(),
        }
    }
}

/// What the phase produced.
#[derive(Debug, Clone)]
pub struct MultiOutcome {
    /// The settings it ran with.
    pub config: MultiConfig,
    /// The poll budget, strikes, cool-off and CPU quota of the instances.
    pub server: ServerConfig,
    /// Why the phase did not run, if it did not.
    pub skipped: Option<String>,
    /// Every run, in the order run.
    pub runs: Vec<MultiRun>,
}

impl MultiOutcome {
    /// Server processes that did not end when asked, over all runs.
    pub fn handlers_left(&self) -> usize {
        self.runs.iter().map(|r| r.handlers_left).sum()
    }

    /// The runs of one variant.
    pub fn of(&self, variant: Variant) -> impl Iterator<Item = &MultiRun> {
        self.runs.iter().filter(move |r| r.variant == variant)
    }

    /// The results as a table (Markdown or aligned text), with the setup
    /// and the command that reproduces them.
    pub fn table(&self, markdown: bool) -> String {
        let mut out = String::new();
        let c = &self.config;
        let s = &self.server;
        let _ = writeln!(
            out,
            "{}Multi-instance: two `curfew-lab serve --mode curfew-policy` processes, an \
             attacker alternating between them with {} identities",
            if markdown { "## " } else { "" },
            c.identities
        );
        if markdown {
            out.push('\n');
        }
        if let Some(why) = &self.skipped {
            let _ = writeln!(out, "{why}\n");
            return out;
        }
        let quota = s
            .cpu_quota
            .map_or_else(|| "none".to_owned(), |q| format!("{q:?}"));
        let _ = writeln!(
            out,
            "{}: {}; policy {} strikes, cool-off {:?}, CPU quota {quota}, poll budget {:?}; \
             {:?} calm, {:?} attack; propagation bound {:?}.\nReproduce: `{}`",
            c.attack.label,
            c.attack.describe(),
            s.strikes,
            s.cool_off,
            s.poll_budget,
            c.baseline,
            c.window,
            c.probe_bound,
            c.command
        );
        if markdown {
            out.push('\n');
        }
        let header = [
            "policy",
            "run",
            "poisoned",
            "admitted (503)",
            "refused (429)",
            "other",
            "calm/s",
            "attack/s",
            "% of calm",
            "benign errors",
            "cool-off reached other instance",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let m = r.summary();
                let share = if m.calm_rps > 0.0 {
                    format!("{:.0}%", 100.0 * m.attack_rps / m.calm_rps)
                } else {
                    "-".to_owned()
                };
                let reached = match (m.reached_ms.first(), m.reached_ms.last()) {
                    (Some(_), Some(max)) => format!(
                        "{}/{} probes, median {:.1} ms, max {:.1} ms",
                        m.reached_ms.len(),
                        r.propagation.len(),
                        stats::percentile(&m.reached_ms, 0.5).unwrap_or(f64::NAN),
                        max
                    ),
                    _ => format!(
                        "0/{} probes within {:?}{}",
                        r.propagation.len(),
                        c.probe_bound,
                        if m.landed < r.propagation.len() {
                            format!(" ({} never landed)", r.propagation.len() - m.landed)
                        } else {
                            String::new()
                        }
                    ),
                };
                vec![
                    r.variant.as_str().to_owned(),
                    r.repeat.to_string(),
                    m.sent.to_string(),
                    m.admitted.to_string(),
                    m.refused.to_string(),
                    if m.other == 0 {
                        "0".to_owned()
                    } else {
                        stats::tally(
                            r.shots
                                .iter()
                                .filter(|s| !matches!(s.sample.status, Some(503 | 429)))
                                .map(|s| match s.sample.status {
                                    Some(code) => format!("{code} {}", s.sample.outcome),
                                    None => s.sample.outcome.clone(),
                                }),
                        )
                    },
                    format!("{:.0}", m.calm_rps),
                    format!("{:.0}", m.attack_rps),
                    share,
                    format!("{}/{}", m.benign_errors, m.benign_sent),
                    reached,
                ]
            })
            .collect();
        out += &render(&header, &rows, markdown);
        if markdown {
            out += "\nColumns: poisoned requests sent over both instances; of those, admitted \
                    (their handler ran until the watchdog answered `503`), refused (`429` \
                    before their handler ran), and anything else; benign `200` answers per \
                    second over both instances before (`calm/s`) and during (`attack/s`) the \
                    attack window; benign requests of the window that failed or timed out; \
                    how long after a probe identity's cool-off landed on one instance (the \
                    `503` of its last strike there) the other instance first answered it \
                    `429`, polled every 2 ms on a new connection.\n\n";
        }
        out
    }
}

fn render(header: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            header.iter().map(|_| " --- |").collect::<String>()
        );
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The source address of attacker identity `i`: `127.0.9.(i + 1)`, one /24.
fn attacker_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 9, (i % 250 + 1) as u8))
}

/// Runs the phase: both variants, `cfg.repeats` times each (median of
/// nothing: every run is a row).
///
/// # Errors
///
/// If a server process cannot be started. A missing `redis-server` is not
/// an error: the outcome says the phase was skipped, and why.
pub fn run(
    cfg: &StudyConfig,
    m: &MultiConfig,
    clients: &tokio::runtime::Runtime,
    pb: &ProgressBar,
) -> io::Result<MultiOutcome> {
    let server = ServerConfig {
        trust_client_header: true,
        policy_store: None,
        ..cfg.server.clone()
    };
    let mut outcome = MultiOutcome {
        config: m.clone(),
        server: server.clone(),
        skipped: None,
        runs: Vec::new(),
    };
    let redis = match curfew_redis::testing::RedisServer::try_start() {
        Ok(r) => r,
        Err(e) => {
            outcome.skipped = Some(format!(
                "multi-instance phase skipped: no redis-server to share the policy through ({e})"
            ));
            return Ok(outcome);
        }
    };
    let body = match m.attack.payload {
        Payload::Size(n) => Bytes::from((m.attack.vector.payload)(n)),
        Payload::Fifo => {
            return Err(io::Error::other(
                "the multi-instance phase needs an attack that ends by itself, not a FIFO read",
            ));
        }
    };
    for repeat in 0..cfg.repeats.max(1) {
        for variant in [Variant::Memory, Variant::Shared] {
            let tag = format!("r{}", outcome.runs.len());
            let mut instance = server.clone();
            if variant == Variant::Shared {
                instance.policy_store = Some(redis.url());
            }
            let mut args: Vec<String> = vec!["--mode".into(), Mode::CurfewPolicy.as_str().into()];
            args.extend(study::server_flags(&instance));
            let a = ChildServer::spawn(cfg, &format!("multi-{tag}-a.log"), &args)?;
            let b = match ChildServer::spawn(cfg, &format!("multi-{tag}-b.log"), &args) {
                Ok(b) => b,
                Err(e) => {
                    let _ = a.shutdown(Duration::from_secs(2));
                    return Err(e);
                }
            };
            pb.set_message(format!(
                "multi-instance · {} · run {repeat}",
                variant.as_str()
            ));
            let drive = Drive {
                cfg,
                m,
                addrs: [a.addr, b.addr],
                body: body.clone(),
                tag,
                strikes: instance.strikes,
            };
            let mut run = clients.block_on(drive.run());
            run.variant = variant;
            run.repeat = repeat;
            for s in [a, b] {
                run.handlers_left += s.shutdown(Duration::from_secs(2)).0.handlers_left;
            }
            outcome.runs.push(run);
        }
    }
    drop(redis);
    Ok(outcome)
}

struct Drive<'a> {
    cfg: &'a StudyConfig,
    m: &'a MultiConfig,
    addrs: [SocketAddr; 2],
    body: Bytes,
    tag: String,
    strikes: u32,
}

impl Drive<'_> {
    async fn run(self) -> MultiRun {
        let (cfg, m) = (self.cfg, self.m);
        let t0 = Instant::now();
        let a0 = t0 + m.baseline;
        let a1 = a0 + m.window;
        // Answers to poisoned requests come within the poll budget; give
        // them a generous bound past the window.
        let last_answer = a1 + Duration::from_secs(5).max(cfg.benign_timeout);
        let benign: Vec<_> = (0..cfg.connections)
            .map(|i| {
                let route = if (i / 2) % 2 == 0 {
                    Route::Hello
                } else {
                    Route::File
                };
                tokio::spawn(load::benign_client(
                    self.addrs[i % 2],
                    i,
                    route,
                    t0,
                    a1,
                    cfg.benign_timeout,
                ))
            })
            .collect();
        let path = m.attack.path();
        let period = Duration::from_secs_f64(1.0 / m.attack.rate.max(0.01));
        let identities = m.identities.max(1);
        let mut shots = Vec::new();
        let mut next = a0;
        let mut j = 0usize;
        while next < a1 {
            tokio::time::sleep_until(next.into()).await;
            let instance = j % 2;
            let identity = (j / 2) % identities;
            let addr = self.addrs[instance];
            let id = format!("{}-atk-{identity}", self.tag);
            let (path, body) = (path.clone(), self.body.clone());
            shots.push(tokio::spawn(async move {
                let sent = Instant::now();
                let res = tokio::time::timeout_at(
                    last_answer.into(),
                    load::send_from(
                        Some(attacker_ip(identity)),
                        addr,
                        Method::POST,
                        &path,
                        &id,
                        body,
                    ),
                )
                .await;
                let (status, outcome, retry_after) = match res {
                    Ok(Ok(a)) => (Some(a.status), a.outcome, a.retry_after.is_some()),
                    Ok(Err(_)) => (None, "connection error".to_owned(), false),
                    Err(_) => (None, "no answer".to_owned(), false),
                };
                Shot {
                    instance,
                    identity,
                    sample: load::AttackSample {
                        sent: (sent - t0).as_secs_f64(),
                        latency: sent.elapsed().as_secs_f64(),
                        status,
                        outcome,
                        retry_after,
                    },
                }
            }));
            j += 1;
            next += period;
        }
        let mut samples = Vec::new();
        for c in benign {
            samples.extend(c.await.unwrap_or_default());
        }
        samples.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        let mut done = Vec::with_capacity(shots.len());
        for s in shots {
            if let Ok(shot) = s.await {
                done.push(shot);
            }
        }
        let mut propagation = Vec::with_capacity(m.probes);
        for k in 0..m.probes {
            propagation.push(self.probe(k).await);
        }
        MultiRun {
            variant: Variant::Memory,
            repeat: 0,
            benign: samples,
            shots: done,
            window_start: (a0 - t0).as_secs_f64(),
            window_end: (a1 - t0).as_secs_f64(),
            propagation,
            handlers_left: 0,
        }
    }

    /// Probe `k`: a fresh identity spends its strikes on one instance (the
    /// instances take turns), then the other is asked as that identity
    /// every 2 ms until it refuses or the bound runs out.
    async fn probe(&self, k: usize) -> Propagation {
        let from = k % 2;
        let (origin, other) = (self.addrs[from], self.addrs[1 - from]);
        let id = format!("{}-probe-{k}", self.tag);
        let ip = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 10, (k % 250 + 1) as u8)));
        let limit = Duration::from_secs(10);
        let send = async |addr, method, path: String, body| {
            tokio::time::timeout(limit, load::send_from(ip, addr, method, &path, &id, body)).await
        };
        // The strikes-th timeout puts the identity into cool-off; its `503`
        // is when the cool-off landed. A request that got no answer (a
        // connection reset on an overloaded machine) is sent again, a few
        // times at most.
        let strikes = self.strikes.max(1);
        let mut landed_at = None;
        let (mut timeouts, mut failures) = (0, 0);
        while timeouts < strikes && failures <= 3 {
            match send(
                origin,
                Method::POST,
                self.m.attack.path(),
                self.body.clone(),
            )
            .await
            {
                Ok(Ok(a)) if a.status == 503 => {
                    timeouts += 1;
                    if timeouts == strikes {
                        landed_at = Some(Instant::now());
                    }
                }
                Ok(Ok(a)) if a.status == 429 => {
                    landed_at = Some(Instant::now());
                    break;
                }
                Ok(Ok(_)) => break,
                _ => failures += 1,
            }
        }
        let Some(landed) = landed_at else {
            return Propagation {
                from,
                landed: false,
                reached: None,
                refused_at_origin: false,
            };
        };
        let deadline = landed + self.m.probe_bound;
        let mut reached = None;
        while Instant::now() < deadline {
            let ans = tokio::time::timeout_at(
                deadline.into(),
                load::send_from(ip, other, Method::GET, "/hello", &id, Bytes::new()),
            )
            .await;
            if let Ok(Ok(a)) = ans {
                if a.status == 429 {
                    reached = Some(landed.elapsed());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let refused_at_origin = matches!(
            send(origin, Method::GET, "/hello".to_owned(), Bytes::new()).await,
            Ok(Ok(a)) if a.status == 429
        );
        Propagation {
            from,
            landed: true,
            reached,
            refused_at_origin,
        }
    }
}
