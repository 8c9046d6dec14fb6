//! The study: every attack against every mode, one fresh server per phase.
//!
//! A *phase* is one attack against one mode. It starts a new server on an
//! ephemeral port of 127.0.0.1 and runs, on a client runtime of its own:
//!
//! 1. **baseline**: benign clients only;
//! 2. **attack window**: the attacker sends payloads at a fixed rate while
//!    the benign clients go on;
//! 3. **recovery**: benign clients only again: does the server come back?
//!
//! Then the lab lets stuck handlers go (it releases the FIFO and sets the
//! stop flag of the lab's infinite loop), stops the server and waits, up to
//! a bound, for every handler body to return, so that no phase burns CPU in
//! the next one. Everything is bounded by time: a poisoned tokio server is
//! simply measured as poisoned.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use curfew_attacks::Vector;
use indicatif::{ProgressBar, ProgressStyle};

use crate::load::{self, AttackSample, BenignOutcome, BenignSample, Route};
pub use crate::multi::{MultiConfig, MultiOutcome};
use crate::server::{Fifo, Form, Mode, Probe, Server, ServerConfig, Shutdown};
use crate::stats;
use crate::sys::ProcStatus;

/// What an attack sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The vector's payload at this size knob.
    Size(usize),
    /// The path of a FIFO that nobody writes to (for `read-path`): the
    /// read blocks in `open` until the lab releases it.
    Fifo,
}

/// One attack of the study: a corpus vector, where the server runs it, and
/// what the attacker sends how often.
#[derive(Debug, Clone)]
pub struct AttackSpec {
    /// The attack's name in the study (and on the command line).
    pub label: String,
    /// The corpus vector whose handler the server runs.
    pub vector: &'static Vector,
    /// Where the server runs the handler.
    pub form: Form,
    /// What the attacker sends.
    pub payload: Payload,
    /// Attack requests per second.
    pub rate: f64,
}

impl AttackSpec {
    fn new(label: &str, vector: &str, form: Option<Form>, payload: Payload, rate: f64) -> Self {
        let vector = curfew_attacks::by_name(vector)
            .unwrap_or_else(|| panic!("the corpus has no vector `{vector}`"));
        AttackSpec {
            label: label.to_owned(),
            vector,
            form: form.unwrap_or(Form::natural(vector.kind)),
            payload,
            rate,
        }
    }

    /// The request path the attacker posts to.
    pub fn path(&self) -> String {
        format!("/attack/{}?form={}", self.vector.name, self.form.as_str())
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        let payload = match self.payload {
            Payload::Size(n) if n == usize::MAX => "n = usize::MAX".to_owned(),
            Payload::Size(n) => format!("n = {n}"),
            Payload::Fifo => "a FIFO's path".to_owned(),
        };
        format!(
            "{} ({}, {}), {} form, {payload}, {}/s",
            self.vector.name,
            self.vector.class,
            self.vector.kind,
            self.form.as_str(),
            self.rate
        )
    }
}

/// The ReadDoS attack rate: the paper's Figure 3 sent its ReadDoS requests
/// "4 times a second".
const READ_RATE: f64 = 4.0;
/// The rate of the CPU attacks.
const CPU_RATE: f64 = 2.0;

/// Attack sizes of the lab's own, where it departs from the corpus's
/// `attack_size` (one to five seconds a request): about 0.5 to 1 s of CPU
/// a request on the 2-core reference machine. That is 5 to 10 times the
/// poll budget, far past it, yet short enough that the threads these
/// requests hold (a tokio worker, or a curfew thread hijacked and demoted
/// to idle priority) finish soon after a phase and do not run into the
/// next one.
pub const LAB_SIZES: &[(&str, usize)] = &[
    ("fancy-regex", 21),
    ("bcrypt-cost", 13),
    ("ammonia-nesting", 14_000),
    ("gzip-bomb", 4096),
];

/// The attacks the study knows by name: the named ones below, then every
/// corpus vector under its own name (natural form, 2/s, the size in
/// [`LAB_SIZES`] or else the corpus's `attack_size`).
///
/// | name | vector | form | payload |
/// | --- | --- | --- | --- |
/// | `read-fifo` | `read-path` | inline (blocking in async) | a FIFO |
/// | `read-fifo-pool` | `read-path` | pool | a FIFO |
/// | `infinite-loop` | `infinite-loop` (lab's stoppable copy) | inline | `usize::MAX` |
pub fn catalog() -> Vec<AttackSpec> {
    let mut v = vec![
        AttackSpec::new(
            "read-fifo",
            "read-path",
            Some(Form::Inline),
            Payload::Fifo,
            READ_RATE,
        ),
        AttackSpec::new(
            "read-fifo-pool",
            "read-path",
            Some(Form::Pool),
            Payload::Fifo,
            READ_RATE,
        ),
    ];
    for vector in curfew_attacks::all() {
        if vector.name == "read-path" {
            continue;
        }
        let size = LAB_SIZES
            .iter()
            .find(|(name, _)| *name == vector.name)
            .map_or(vector.attack_size, |&(_, n)| n);
        v.push(AttackSpec::new(
            vector.name,
            vector.name,
            None,
            Payload::Size(size),
            CPU_RATE,
        ));
    }
    v
}

/// The attack called `name` in the [`catalog`].
pub fn attack(name: &str) -> Option<AttackSpec> {
    catalog().into_iter().find(|a| a.label == name)
}

/// The attacks of the default study.
pub const DEFAULT_ATTACKS: &[&str] = &[
    "fancy-regex",
    "read-fifo",
    "read-fifo-pool",
    "infinite-loop",
    "bcrypt-cost",
    "ammonia-nesting",
    "gzip-bomb",
];

/// The attacks of the quick study.
pub const QUICK_ATTACKS: &[&str] = &["infinite-loop", "read-fifo"];

/// Everything the study does.
#[derive(Debug, Clone)]
pub struct StudyConfig {
    /// The modes, run in this order for each attack.
    pub modes: Vec<Mode>,
    /// The attacks.
    pub attacks: Vec<AttackSpec>,
    /// Benign load alone before the attack.
    pub baseline: Duration,
    /// How long the attacker sends.
    pub window: Duration,
    /// Benign load alone after the attack.
    pub recovery: Duration,
    /// Benign keep-alive connections (half ask for `/hello`, half `/file`).
    pub connections: usize,
    /// How long a benign client waits for an answer.
    pub benign_timeout: Duration,
    /// The server's settings.
    pub server: ServerConfig,
    /// `curfew-supervised` mode: the workers' hand-off threshold, in place
    /// of `server`'s [default: `cli::SUPERVISED_HAND_OFF`].
    pub supervised_hand_off: Option<Duration>,
    /// `curfew-supervised` mode: whether the workers' handed-off polls move
    /// to the idle class [default: yes].
    pub supervised_hand_off_idle: bool,
    /// The longest wait for stuck handlers when a phase ends.
    pub drain: Duration,
    /// The width of a time bucket in the plot.
    pub bucket: Duration,
    /// Where the report, plot and CSV go.
    pub out: PathBuf,
    /// Whether to draw progress bars (on stderr).
    pub progress: bool,
    /// How many times each phase runs; the tables show the median.
    pub repeats: usize,
    /// The `curfew-lab` binary that serves in a child process in
    /// `curfew-supervised` mode and in the multi-instance phase [default:
    /// this process's executable].
    pub server_exe: Option<PathBuf>,
    /// Whether to run the attack phases (every attack against every mode).
    pub attack_phases: bool,
    /// The multi-instance phase, if it runs: two servers that share Redis
    /// (or not) under an attacker who alternates between them.
    pub multi: Option<MultiConfig>,
}

fn named(names: &[&str]) -> Vec<AttackSpec> {
    names
        .iter()
        .map(|n| attack(n).unwrap_or_else(|| panic!("no attack `{n}` in the catalog")))
        .collect()
}

impl StudyConfig {
    /// The default study: [`DEFAULT_ATTACKS`] against every mode, about three
    /// minutes on two cores.
    pub fn full() -> Self {
        Self {
            modes: Mode::ALL.to_vec(),
            attacks: named(DEFAULT_ATTACKS),
            baseline: Duration::from_millis(1500),
            window: Duration::from_secs(4),
            recovery: Duration::from_millis(1500),
            connections: 32,
            benign_timeout: Duration::from_secs(2),
            server: ServerConfig::default(),
            supervised_hand_off: Some(crate::cli::SUPERVISED_HAND_OFF),
            supervised_hand_off_idle: true,
            drain: Duration::from_secs(20),
            bucket: Duration::from_millis(500),
            out: PathBuf::from("lab-out"),
            progress: true,
            repeats: 3,
            server_exe: None,
            attack_phases: true,
            multi: Some(MultiConfig::full()),
        }
    }

    /// The quick study: [`QUICK_ATTACKS`] with short phases, under 30
    /// seconds, then the quick multi-instance phase ([`MultiConfig::quick`],
    /// about 20 seconds).
    pub fn quick() -> Self {
        Self {
            attacks: named(QUICK_ATTACKS),
            baseline: Duration::from_millis(700),
            window: Duration::from_millis(2000),
            recovery: Duration::from_millis(800),
            drain: Duration::from_secs(5),
            bucket: Duration::from_millis(250),
            repeats: 1,
            multi: Some(MultiConfig::quick()),
            ..Self::full()
        }
    }

    /// The length of one phase.
    pub fn phase_len(&self) -> Duration {
        self.baseline + self.window + self.recovery
    }

    /// How many attack phases the study runs.
    pub fn phase_count(&self) -> usize {
        if !self.attack_phases {
            return 0;
        }
        self.attacks.len() * self.modes.len() * self.repeats.max(1)
    }
}

/// What curfew's metrics said about a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CurfewCounts {
    /// Timeouts on the event threads.
    pub event_timeouts: u64,
    /// Timeouts in the worker pool.
    pub pool_timeouts: u64,
    /// Event threads hijacked during the phase.
    pub event_hijacked: u64,
    /// Pool threads abandoned during the phase.
    pub pool_hijacked: u64,
    /// The most threads hijacked or abandoned at once.
    pub max_hijacked_now: usize,
    /// The most threads overdue at once (not replaced: cap reached).
    pub max_overdue: usize,
    /// Spawns refused.
    pub refused: u64,
}

/// One attack against one mode.
#[derive(Debug, Clone)]
pub struct Phase {
    /// The mode.
    pub mode: Mode,
    /// The attack.
    pub attack: AttackSpec,
    /// When the attack window opened, in seconds from the phase start.
    pub window_start: f64,
    /// When it closed.
    pub window_end: f64,
    /// When the phase ended.
    pub end: f64,
    /// Every benign request.
    pub benign: Vec<BenignSample>,
    /// Every attack request.
    pub attacks: Vec<AttackSample>,
    /// The process before the phase.
    pub before: ProcStatus,
    /// The largest values seen during the phase.
    pub peak: ProcStatus,
    /// Curfew's counters (curfew modes).
    pub curfew: Option<CurfewCounts>,
    /// The longest the load generator's runtime was late for a 10 ms
    /// timer: a check that the clients themselves kept running.
    pub client_lag: Duration,
    /// The cores that other processes on the machine kept busy, on
    /// average over the phase.
    pub others_cores: f64,
    /// How stopping the server went.
    pub shutdown: Shutdown,
    /// Which run of this attack against this mode (0, 1, ...).
    pub repeat: usize,
    /// `curfew-supervised`: what the supervisor did (workers recycled,
    /// killed while draining, restarted), read from its summary line.
    pub supervisor: Option<SupervisorCounts>,
}

/// What the supervisor of a `curfew-supervised` server did in a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorCounts {
    /// Workers recycled.
    pub recycled: u64,
    /// Draining workers killed at the drain deadline.
    pub killed_while_draining: u64,
    /// Workers that died unasked and were replaced.
    pub restarts: u64,
}

impl SupervisorCounts {
    /// Reads `recycled=1 killed_while_draining=0 restarts=0` from a line.
    pub fn parse(line: &str) -> Option<Self> {
        let get = |key: &str| {
            line.split_ascii_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        Some(Self {
            recycled: get("recycled")?,
            killed_while_draining: get("killed_while_draining")?,
            restarts: get("restarts")?,
        })
    }
}

/// The numbers of a phase that the table shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Benign answers per second before the attack.
    pub base_rps: f64,
    /// Benign answers per second during the attack window.
    pub attack_rps: f64,
    /// Benign answers per second after it.
    pub recovery_rps: f64,
    /// Median benign latency before the attack, ms.
    pub base_p50_ms: f64,
    /// 99th percentile benign latency before the attack, ms.
    pub base_p99_ms: f64,
    /// Median benign latency of requests sent in the window, ms, corrected
    /// for coordinated omission ([`stats::corrected`], with the baseline's
    /// mean latency as the interval); timeouts count as the timeout.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// The slowest benign request sent in the window, ms.
    pub max_ms: f64,
    /// Benign requests sent in the window.
    pub sent: usize,
    /// Of those, failed or timed out.
    pub errors: usize,
    /// Attack requests sent.
    pub attacks: usize,
    /// Attack requests answered before the phase ended.
    pub answered: usize,
    /// Median time to an answer, ms.
    pub answer_p50_ms: Option<f64>,
    /// The attacker's answers by status and outcome, e.g. `503 timeout ×8`.
    pub answers: String,
}

impl Phase {
    /// The start of the baseline's measured part, in seconds: the first
    /// quarter second goes to making connections.
    fn warm(&self) -> f64 {
        (self.window_start / 4.0).min(0.25)
    }

    /// The usual time between two requests of one closed-loop benign
    /// client, in seconds: the mean latency before the attack. It is the
    /// interval of the coordinated-omission correction
    /// ([`stats::with_missed`]).
    pub fn interval(&self) -> f64 {
        let (sum, n) = self
            .benign
            .iter()
            .filter(|s| s.sent >= self.warm() && s.sent < self.window_start)
            .fold((0.0, 0usize), |(sum, n), s| (sum + s.latency, n + 1));
        if n == 0 { 0.0 } else { sum / n as f64 }
    }

    /// The table's numbers for this phase.
    pub fn summary(&self) -> Summary {
        let ok_between = |a: f64, b: f64| {
            self.benign
                .iter()
                .filter(|s| s.outcome == BenignOutcome::Ok && s.done() >= a && s.done() < b)
                .count() as f64
                / (b - a).max(1e-9)
        };
        let window = stats::corrected(
            &self
                .benign
                .iter()
                .filter(|s| s.sent >= self.window_start && s.sent < self.window_end)
                .map(|s| s.latency * 1e3)
                .collect::<Vec<_>>(),
            self.interval() * 1e3,
        );
        let base = {
            let mut v: Vec<f64> = self
                .benign
                .iter()
                .filter(|s| s.sent >= self.warm() && s.sent < self.window_start)
                .map(|s| s.latency * 1e3)
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let max_ms = window.last().copied().unwrap_or(f64::NAN);
        let in_window: Vec<_> = self
            .benign
            .iter()
            .filter(|s| s.sent >= self.window_start && s.sent < self.window_end)
            .collect();
        let mut answered: Vec<f64> = self
            .attacks
            .iter()
            .filter(|a| a.status.is_some())
            .map(|a| a.latency * 1e3)
            .collect();
        answered.sort_by(f64::total_cmp);
        Summary {
            base_rps: ok_between(self.warm(), self.window_start),
            attack_rps: ok_between(self.window_start, self.window_end),
            recovery_rps: ok_between(self.window_end, self.end),
            base_p50_ms: stats::percentile(&base, 0.50).unwrap_or(f64::NAN),
            base_p99_ms: stats::percentile(&base, 0.99).unwrap_or(f64::NAN),
            p50_ms: stats::percentile(&window, 0.50).unwrap_or(f64::NAN),
            p99_ms: stats::percentile(&window, 0.99).unwrap_or(f64::NAN),
            max_ms,
            sent: in_window.len(),
            errors: in_window
                .iter()
                .filter(|s| s.outcome != BenignOutcome::Ok)
                .count(),
            attacks: self.attacks.len(),
            answered: answered.len(),
            answer_p50_ms: stats::percentile(&answered, 0.5),
            answers: stats::tally(self.attacks.iter().map(|a| match a.status {
                Some(s) => format!("{s} {}", a.outcome),
                None => a.outcome.clone(),
            })),
        }
    }
}

/// What a study produced.
#[derive(Debug)]
pub struct StudyOutcome {
    /// Every phase, in the order run.
    pub phases: Vec<Phase>,
    /// The configuration it ran with.
    pub config: StudyConfig,
    /// How long it took.
    pub elapsed: Duration,
    /// The Markdown report.
    pub report: PathBuf,
    /// The SVG plot.
    pub plot: PathBuf,
    /// The per-bucket time series.
    pub csv: PathBuf,
    /// Handler bodies still running after the last phase (threads the
    /// process cannot end by itself).
    pub handlers_left: usize,
    /// The system's load averages when the study started and ended: other
    /// work on the machine shows up in every number.
    pub load: (String, String),
    /// The multi-instance phase, if the study ran it (or skipped it, and
    /// why).
    pub multi: Option<MultiOutcome>,
}

impl fmt::Display for StudyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.phases.is_empty() {
            f.write_str(&crate::report::table(&self.config, &self.phases))?;
        }
        if let Some(m) = &self.multi {
            f.write_str(&m.table(false))?;
        }
        Ok(())
    }
}

fn progress_bar(cfg: &StudyConfig, phases: usize) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let total = cfg.phase_len().as_millis() as u64 * phases as u64;
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {percent:>3}% {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Runs the study, writes the report, plot and CSV into `cfg.out`, and
/// returns the phases.
///
/// It runs each attack against each mode in turn, on fresh servers on
/// 127.0.0.1, and blocks until done: about
/// `attacks × modes × phase_len` plus the drains.
pub fn run(cfg: &StudyConfig) -> io::Result<StudyOutcome> {
    let started = Instant::now();
    let load_before = crate::sys::load_average();
    std::fs::create_dir_all(&cfg.out)?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lab-client")
        .enable_all()
        .build()?;
    let n = cfg.phase_count();
    let pb = progress_bar(cfg, n);
    let mut phases = Vec::with_capacity(n);
    let fifo_dir = std::env::temp_dir();
    let attacks = if cfg.attack_phases {
        &cfg.attacks[..]
    } else {
        &[]
    };
    for attack in attacks {
        let payload = match attack.payload {
            Payload::Size(size) => Some(Bytes::from((attack.vector.payload)(size))),
            Payload::Fifo => None,
        };
        for &mode in &cfg.modes {
            for repeat in 0..cfg.repeats.max(1) {
                let i = phases.len();
                let fifo = match attack.payload {
                    Payload::Fifo => Some(Fifo::new(&fifo_dir)?),
                    Payload::Size(_) => None,
                };
                let body = match &fifo {
                    Some(f) => Bytes::from(f.path().as_os_str().as_encoded_bytes().to_vec()),
                    None => payload.clone().unwrap_or_default(),
                };
                let server = if mode == Mode::CurfewSupervised {
                    PhaseServer::Child(ChildServer::start(cfg, i)?)
                } else {
                    PhaseServer::InProcess(Server::start(
                        mode,
                        &cfg.server,
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                    )?)
                };
                let ctx = PhaseCtx {
                    cfg,
                    attack,
                    mode,
                    addr: server.addr(),
                    probe: server.probe(),
                    body,
                    pb: &pb,
                    index: i,
                    of: n,
                };
                let mut phase = clients.block_on(ctx.drive());
                phase.repeat = repeat;
                // Let stuck handlers go, then stop the server.
                pb.set_message(format!("[{}/{n}] {mode} · {} · drain", i + 1, attack.label));
                if let Some(f) = &fifo {
                    f.release();
                }
                (phase.shutdown, phase.supervisor) = server.shutdown(cfg.drain);
                phases.push(phase);
            }
        }
    }
    let multi = match &cfg.multi {
        Some(m) => {
            let outcome = crate::multi::run(cfg, m, &clients, &pb)?;
            if let Some(why) = &outcome.skipped {
                pb.suspend(|| eprintln!("curfew-lab: {why}"));
            }
            Some(outcome)
        }
        None => None,
    };
    pb.finish_and_clear();
    clients.shutdown_timeout(Duration::from_secs(1));
    let handlers_left = phases.last().map_or(0, |p| p.shutdown.handlers_left)
        + multi.as_ref().map_or(0, |m| m.handlers_left());
    let report = cfg.out.join("report.md");
    let plot = cfg.out.join("timeline.svg");
    let csv = cfg.out.join("timeline.csv");
    let elapsed = started.elapsed();
    let load = (load_before, crate::sys::load_average());
    if !phases.is_empty() {
        crate::plot::write_svg(&plot, cfg, &phases).map_err(io::Error::other)?;
        std::fs::write(&csv, crate::report::csv(cfg, &phases))?;
    }
    std::fs::write(
        &report,
        crate::report::markdown(cfg, &phases, multi.as_ref(), elapsed, &load),
    )?;
    Ok(StudyOutcome {
        phases,
        config: cfg.clone(),
        elapsed,
        report,
        plot,
        csv,
        handlers_left,
        load,
        multi,
    })
}

/// The server of one phase: in this process, or (`curfew-supervised`) a
/// `curfew-lab serve --processes 1` child.
enum PhaseServer {
    InProcess(Server),
    Child(ChildServer),
}

impl PhaseServer {
    fn addr(&self) -> SocketAddr {
        match self {
            PhaseServer::InProcess(s) => s.addr(),
            PhaseServer::Child(c) => c.addr,
        }
    }

    fn probe(&self) -> Option<Probe> {
        match self {
            PhaseServer::InProcess(s) => Some(s.probe()),
            PhaseServer::Child(_) => None,
        }
    }

    fn shutdown(self, wait: Duration) -> (Shutdown, Option<SupervisorCounts>) {
        match self {
            PhaseServer::InProcess(s) => {
                s.stop_spinning();
                (s.shutdown(wait), None)
            }
            PhaseServer::Child(c) => c.shutdown(wait),
        }
    }
}

/// A `curfew-lab serve` child process: `--mode curfew-supervised
/// --processes 1` in a phase, so that the load generator does not share the
/// server's process (and the supervisor can kill a poisoned worker without
/// killing the study), or one instance of the multi-instance phase.
pub(crate) struct ChildServer {
    child: std::process::Child,
    pub(crate) addr: SocketAddr,
    stdout: std::sync::mpsc::Receiver<String>,
}

/// The flags that give a `curfew-lab serve` child the study's server
/// settings.
pub fn server_flags(cfg: &ServerConfig) -> Vec<String> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let limit = |d: Option<Duration>| d.map_or_else(|| "off".to_owned(), ms);
    let mut v: Vec<String> = [
        ("--threads", cfg.threads.to_string()),
        ("--io-threads", cfg.io_threads.to_string()),
        ("--blocking-threads", cfg.blocking_threads.to_string()),
        ("--poll-budget", ms(cfg.poll_budget)),
        ("--job-budget", ms(cfg.job_budget)),
        ("--strikes", cfg.strikes.to_string()),
        ("--cool-off", ms(cfg.cool_off)),
        ("--hand-off-long-polls", limit(cfg.hand_off_long_polls)),
        (
            "--hand-off-class",
            (if cfg.hand_off_idle { "idle" } else { "nice" }).to_owned(),
        ),
        ("--header-read-timeout", limit(cfg.header_read_timeout)),
        ("--body-timeout", limit(cfg.body_timeout)),
        ("--idle-timeout", limit(cfg.idle_timeout)),
        ("--max-connections", cfg.max_connections.to_string()),
        (
            "--max-connections-per-ip",
            cfg.max_connections_per_ip.to_string(),
        ),
        (
            "--max-body-in-flight-mib",
            cfg.max_body_in_flight
                .map_or(0, |b| b.div_ceil(1 << 20))
                .to_string(),
        ),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect();
    if let Some(n) = cfg.max_hijacked_threads {
        v.extend(["--max-hijacked-threads".into(), n.to_string()]);
    }
    if let Some(n) = cfg.max_abandoned_threads {
        v.extend(["--max-abandoned-threads".into(), n.to_string()]);
    }
    if cfg.trust_client_header {
        v.push("--trust-client-header".into());
    }
    if cfg.public_metrics {
        v.push("--public-metrics".into());
    }
    if let Some(q) = cfg.cpu_quota {
        v.extend([
            "--cpu-quota".into(),
            format!("{}/{}", ms(q.quota()), ms(q.window())),
        ]);
    }
    if let Some(url) = &cfg.policy_store {
        v.extend(["--policy-store".into(), url.clone()]);
    }
    v
}

impl ChildServer {
    fn start(cfg: &StudyConfig, index: usize) -> io::Result<ChildServer> {
        let mut args: Vec<String> = [
            "--mode",
            "curfew-supervised",
            "--processes",
            "1",
            "--drain-deadline",
            "2s",
        ]
        .map(String::from)
        .to_vec();
        let server = ServerConfig {
            hand_off_long_polls: cfg.supervised_hand_off,
            hand_off_idle: cfg.supervised_hand_off_idle,
            ..cfg.server.clone()
        };
        args.extend(server_flags(&server));
        Self::spawn(cfg, &format!("server-{index}.log"), &args)
    }

    /// `curfew-lab serve --addr 127.0.0.1:0 ARGS`, its stderr into
    /// `cfg.out/LOG`; returns once it answers on the address it printed.
    pub(crate) fn spawn(cfg: &StudyConfig, log: &str, args: &[String]) -> io::Result<ChildServer> {
        use std::io::BufRead as _;
        let exe = match &cfg.server_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let log = std::fs::File::create(cfg.out.join(log))?;
        let mut child = std::process::Command::new(exe)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, stdout) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match stdout.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::other(
                        "a `curfew-lab serve` child did not say where it listens within 20 s",
                    ));
                }
            };
            let addr = line
                .split_once("http://")
                .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
                .and_then(|a| a.parse().ok());
            if let Some(addr) = addr {
                // Wait until a worker answers.
                while Instant::now() < deadline {
                    if std::net::TcpStream::connect(addr).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Ok(ChildServer {
                    child,
                    addr,
                    stdout,
                });
            }
        }
    }

    /// SIGTERM (the supervisor drains its workers; a plain server just
    /// ends), then SIGKILL after `wait`.
    pub(crate) fn shutdown(mut self, wait: Duration) -> (Shutdown, Option<SupervisorCounts>) {
        let start = Instant::now();
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the child is ours and has
            // not been waited for, so the pid is still its own.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let mut left = 0;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() < wait => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    left = 1;
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let counts =
            std::iter::from_fn(|| self.stdout.recv_timeout(Duration::from_millis(200)).ok())
                .find_map(|l| SupervisorCounts::parse(&l));
        (
            Shutdown {
                took: start.elapsed(),
                handlers_left: left,
            },
            counts,
        )
    }
}

struct PhaseCtx<'a> {
    cfg: &'a StudyConfig,
    attack: &'a AttackSpec,
    mode: Mode,
    addr: SocketAddr,
    probe: Option<Probe>,
    body: Bytes,
    pb: &'a ProgressBar,
    index: usize,
    of: usize,
}

impl PhaseCtx<'_> {
    async fn drive(self) -> Phase {
        let cfg = self.cfg;
        let before = ProcStatus::now();
        let cpu_before = crate::sys::CpuTimes::now();
        let start_metrics = self.probe.as_ref().and_then(Probe::metrics);
        let t0 = Instant::now();
        let a0 = t0 + cfg.baseline;
        let a1 = a0 + cfg.window;
        let end = a1 + cfg.recovery;
        let clients: Vec<_> = (0..cfg.connections)
            .map(|i| {
                let route = if i % 2 == 0 {
                    Route::Hello
                } else {
                    Route::File
                };
                tokio::spawn(load::benign_client(
                    self.addr,
                    i,
                    route,
                    t0,
                    end,
                    cfg.benign_timeout,
                ))
            })
            .collect();
        // How late the client runtime runs a 10 ms timer: if the load
        // generator itself stalls, the phase's numbers mean little.
        let lag = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while Instant::now() < end {
                let due = Instant::now() + Duration::from_millis(10);
                tokio::time::sleep_until(due.into()).await;
                worst = worst.max(Instant::now().saturating_duration_since(due));
            }
            worst
        });
        let attacker = tokio::spawn(load::attacker(
            load::AttackPlan {
                addr: self.addr,
                path: self.attack.path(),
                body: self.body.clone(),
                rate: self.attack.rate,
                start: a0,
                stop: a1,
                end,
            },
            t0,
        ));

        let mut peak = before;
        let mut counts = CurfewCounts::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let base_pos = self.index as u64 * cfg.phase_len().as_millis() as u64;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let p = ProcStatus::now();
            peak.rss_kib = peak.rss_kib.max(p.rss_kib);
            peak.threads = peak.threads.max(p.threads);
            if let Some(m) = self.probe.as_ref().and_then(Probe::metrics) {
                counts.max_hijacked_now = counts
                    .max_hijacked_now
                    .max(m.event.hijacked_threads + m.blocking.hijacked_threads);
                counts.max_overdue = counts
                    .max_overdue
                    .max(m.event.overdue_threads + m.blocking.overdue_threads);
            }
            let stage = if now < a0 {
                "baseline"
            } else if now < a1 {
                "attack"
            } else {
                "recovery"
            };
            self.pb
                .set_position(base_pos + (now - t0).as_millis() as u64);
            self.pb.set_message(format!(
                "[{}/{}] {} · {} · {stage}",
                self.index + 1,
                self.of,
                self.mode,
                self.attack.label
            ));
            if now >= end {
                break;
            }
        }
        let mut benign = Vec::new();
        for c in clients {
            benign.extend(c.await.unwrap_or_default());
        }
        benign.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        let attacks = attacker.await.unwrap_or_default();
        let client_lag = lag.await.unwrap_or_default();
        let others_cores =
            crate::sys::CpuTimes::now().others_cores_since(&cpu_before, t0.elapsed());
        let curfew = match (start_metrics, self.probe.as_ref().and_then(Probe::metrics)) {
            (Some(s), Some(e)) => Some(CurfewCounts {
                event_timeouts: e.event.timeouts - s.event.timeouts,
                pool_timeouts: e.blocking.timeouts - s.blocking.timeouts,
                event_hijacked: e.event.hijacked_total - s.event.hijacked_total,
                pool_hijacked: e.blocking.hijacked_total - s.blocking.hijacked_total,
                refused: e.refused - s.refused,
                ..counts
            }),
            _ => None,
        };
        let secs = |t: Instant| (t - t0).as_secs_f64();
        Phase {
            mode: self.mode,
            attack: self.attack.clone(),
            window_start: secs(a0),
            window_end: secs(a1),
            end: secs(end),
            benign,
            attacks,
            before,
            peak,
            curfew,
            client_lag,
            others_cores,
            shutdown: Shutdown {
                took: Duration::ZERO,
                handlers_left: 0,
            },
            repeat: 0,
            supervisor: None,
        }
    }
}

/// Benign answers per second and the 99th percentile latency, per time
/// bucket of a phase: the series the plot draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// The bucket's start, in seconds from the phase start.
    pub start: f64,
    /// `200` answers completed in the bucket, per second.
    pub rps: f64,
    /// The 99th percentile of the waits seen in the bucket, ms: the
    /// latency of each request that ended in it (answered, failed or timed
    /// out), and the age of each request still waiting at its end, so that
    /// a stall shows as a rising line rather than a gap; corrected for
    /// coordinated omission ([`stats::with_missed`]). `None` if the bucket
    /// saw no request.
    pub p99_ms: Option<f64>,
    /// Requests that ended in the bucket without a `200`.
    pub errors: usize,
}

/// The phase's time series, in buckets of `width`.
pub fn buckets(phase: &Phase, width: Duration) -> Vec<Bucket> {
    let w = width.as_secs_f64();
    let n = (phase.end / w).ceil() as usize;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut ok = vec![0usize; n];
    let mut errors = vec![0usize; n];
    let index = |t: f64| ((t / w) as usize).min(n.saturating_sub(1));
    let interval = phase.interval();
    for s in &phase.benign {
        let done = s.done();
        let i = index(done);
        for (sent, latency) in stats::with_missed(s.sent, s.latency, interval) {
            lat[i].push(latency * 1e3);
            for (j, l) in lat.iter_mut().enumerate().take(i).skip(index(sent)) {
                l.push(((j + 1) as f64 * w - sent) * 1e3);
            }
        }
        if s.outcome == BenignOutcome::Ok {
            ok[i] += 1;
        } else {
            errors[i] += 1;
        }
    }
    (0..n)
        .map(|i| {
            let mut l = std::mem::take(&mut lat[i]);
            l.sort_by(f64::total_cmp);
            Bucket {
                start: i as f64 * w,
                rps: ok[i] as f64 / w,
                p99_ms: stats::percentile(&l, 0.99),
                errors: errors[i],
            }
        })
        .collect()
}
