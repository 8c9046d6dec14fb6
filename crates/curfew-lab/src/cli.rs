//! The command line: `study`, `serve` and `list`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::server::{Mode, Server, ServerConfig};
use crate::study::{self, StudyConfig};

/// Event handler poisoning, measured: a small HTTP server under real
/// attacks, served by plain tokio and by curfew.
#[derive(Debug, Parser)]
#[command(name = "curfew-lab", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every attack against every mode and write a report and a plot.
    Study(StudyArgs),
    /// Serve the lab's routes, for an outside load generator (wrk, oha).
    Serve(ServeArgs),
    /// List the attacks the study knows.
    List,
}

/// The server's settings on the command line.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Tokio workers (tokio mode) or curfew event threads (curfew modes).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Unused: the curfew modes serve connections on curfew's own I/O
    /// driver (kept so that older command lines parse).
    #[arg(long, default_value_t = 1)]
    pub io_threads: usize,
    /// Curfew's worker-pool threads.
    #[arg(long, default_value_t = 4)]
    pub blocking_threads: usize,
    /// Curfew's poll budget (the paper's Figure 3: 100ms).
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub poll_budget: Duration,
    /// Curfew's job budget (the paper's Figure 3: 1s).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub job_budget: Duration,
    /// Curfew modes: hand off a poll that has run this long: start an
    /// event thread in its place and nice the long poll's thread by 10
    /// until it returns (`off`: never; see
    /// `Builder::hand_off_long_polls`) [default: 10ms in worker processes
    /// under the supervisor (`curfew-supervised`, `--processes N`), off in
    /// one process].
    #[arg(long, value_parser = parse_limit)]
    pub hand_off_long_polls: Option<Duration>,
    /// Curfew modes, with a hand-off: whether the handed-off poll's thread
    /// also moves to the idle scheduling class until its timeout (see
    /// `Builder::hand_off_to_idle_class`) [default: idle in worker
    /// processes under the supervisor, nice in one process].
    #[arg(long, value_enum)]
    pub hand_off_class: Option<HandOffClass>,
    /// Cap on hijacked event threads [default: curfew's, 4 × threads].
    #[arg(long)]
    pub max_hijacked_threads: Option<usize>,
    /// Cap on abandoned pool threads [default: curfew's, 4 × blocking threads].
    #[arg(long)]
    pub max_abandoned_threads: Option<usize>,
    /// curfew-policy: timeouts before a client is refused.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub strikes: u32,
    /// curfew-policy: how long a client is refused.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub cool_off: Duration,
    /// curfew-policy: CPU time a client may spend per window, as
    /// QUOTA/WINDOW (e.g. 2s/60s); over it, it is refused until the window
    /// frees it.
    #[arg(long)]
    pub cpu_quota: Option<curfew::policy::CpuQuota>,
    /// curfew-policy: share strikes, cool-offs and quotas with other
    /// instances through Redis (e.g. redis://127.0.0.1:6379/).
    #[arg(long, value_name = "URL")]
    pub policy_store: Option<String>,
    /// How long a client may take to send a request's headers (`off`: no
    /// limit).
    #[arg(long, value_parser = parse_limit, default_value = "10s")]
    pub header_read_timeout: Duration,
    /// Curfew modes: how long a request body may go without a byte (`off`:
    /// no limit).
    #[arg(long, value_parser = parse_limit, default_value = "10s")]
    pub body_timeout: Duration,
    /// Curfew modes: how long a connection may sit idle (`off`: no limit).
    #[arg(long, value_parser = parse_limit, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Curfew modes: the most connections open at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Curfew modes: the most connections open at once from one IP address.
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Curfew modes: the most request body MiB in flight, over all
    /// requests (0: no limit).
    #[arg(long, default_value_t = 256)]
    pub max_body_in_flight_mib: usize,
}

/// The hand-off threshold of a worker process under the supervisor when
/// `--hand-off-long-polls` is not given. A poisoned worker is killed a few
/// milliseconds after its poll's budget runs out; until then the hand-off
/// keeps its event threads serving and lowers the spinning poll's
/// priority. (In one process a handed-off poll that never returns holds a
/// place under the cap for good, so there it stays off unless asked for.)
pub const SUPERVISED_HAND_OFF: Duration = Duration::from_millis(10);

/// How a handed-off poll's thread runs until its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandOffClass {
    /// Niced by 10, in the ordinary class.
    Nice,
    /// Niced by 10 and in the idle class (`SCHED_IDLE`).
    Idle,
}

impl ServerArgs {
    /// Whether a handed-off poll moves to the idle class: the flag's
    /// choice, or by default in a supervised worker only (a process the
    /// supervisor replaces soon after the poll's timeout).
    pub fn hand_off_idle(&self, supervised: bool) -> bool {
        match self.hand_off_class {
            Some(c) => c == HandOffClass::Idle,
            None => supervised,
        }
    }

    /// The hand-off threshold: the flag's, or by default
    /// [`SUPERVISED_HAND_OFF`] in a supervised worker and none otherwise.
    pub fn hand_off(&self, supervised: bool) -> Option<Duration> {
        match self.hand_off_long_polls {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => supervised.then_some(SUPERVISED_HAND_OFF),
        }
    }

    /// The server configuration these flags describe (for one process).
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            threads: self.threads,
            io_threads: self.io_threads,
            blocking_threads: self.blocking_threads,
            poll_budget: self.poll_budget,
            job_budget: self.job_budget,
            hand_off_long_polls: self.hand_off(false),
            hand_off_idle: self.hand_off_idle(false),
            max_hijacked_threads: self.max_hijacked_threads,
            max_abandoned_threads: self.max_abandoned_threads,
            strikes: self.strikes,
            cool_off: self.cool_off,
            cpu_quota: self.cpu_quota,
            policy_store: self.policy_store.clone(),
            header_read_timeout: (!self.header_read_timeout.is_zero())
                .then_some(self.header_read_timeout),
            body_timeout: (!self.body_timeout.is_zero()).then_some(self.body_timeout),
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_body_in_flight: (self.max_body_in_flight_mib > 0)
                .then(|| self.max_body_in_flight_mib.saturating_mul(1 << 20)),
            ..ServerConfig::default()
        }
    }
}

/// `curfew-lab study`.
#[derive(Debug, Clone, Args)]
pub struct StudyArgs {
    /// Two attacks, short phases, and a short multi-instance phase: under a
    /// minute.
    #[arg(long)]
    pub quick: bool,
    /// Where the report, plot and CSV go.
    #[arg(long, default_value = "lab-out")]
    pub out: PathBuf,
    /// Modes to run, in order [default: tokio,curfew,curfew-policy].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Option<Vec<Mode>>,
    /// Attacks to run (see `curfew-lab list`).
    #[arg(long, value_delimiter = ',')]
    pub attacks: Option<Vec<String>>,
    /// Benign load alone before each attack.
    #[arg(long, value_parser = parse_duration)]
    pub baseline: Option<Duration>,
    /// How long each attack lasts.
    #[arg(long, value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// Benign load alone after each attack.
    #[arg(long, value_parser = parse_duration)]
    pub recovery: Option<Duration>,
    /// Benign keep-alive connections.
    #[arg(long)]
    pub connections: Option<usize>,
    /// The width of a time bucket in `timeline.csv` and the plot, from
    /// 1ms to 10s [default: 500ms, or 250ms with --quick]. Narrow buckets
    /// show how throughput dips around each attack request.
    #[arg(long, value_parser = parse_duration)]
    pub bucket: Option<Duration>,
    /// How long a benign client waits for an answer.
    #[arg(long, value_parser = parse_duration)]
    pub benign_timeout: Option<Duration>,
    /// Attack requests per second, for every attack [default: 4 for
    /// ReadDoS as in the paper's Figure 3, 2 for the others].
    #[arg(long)]
    pub attack_rate: Option<f64>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Which parts of the study to run: `attacks` (every attack against
    /// every mode) and `multi-instance` (two servers, shared Redis or not,
    /// an attacker alternating between them) [default: both].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub phases: Option<Vec<StudyPhase>>,
    /// Multi-instance phase: the attacker's identities.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=250))]
    pub identities: Option<u64>,
    /// Runs of each attack against each mode; the tables show the median
    /// [default: 3, or 1 with --quick]. The multi-instance phase runs each
    /// variant as often.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub repeats: Option<u64>,
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
}

impl StudyArgs {
    /// The command line that reproduces these flags (without `--out` and
    /// `--no-progress`).
    pub fn command(&self) -> String {
        let mut v = vec!["cargo run --release -p curfew-lab -- study".to_owned()];
        let mut argv = std::env::args();
        let ours = argv.next().is_some_and(|exe| {
            std::path::Path::new(&exe)
                .file_stem()
                .is_some_and(|n| n == "curfew-lab")
        });
        let args: Vec<String> = argv.collect();
        if ours && args.first().is_some_and(|a| a == "study") {
            let mut skip = false;
            for a in &args[1..] {
                if std::mem::take(&mut skip) {
                    continue;
                }
                match a.as_str() {
                    "--out" => skip = true,
                    "--no-progress" => {}
                    a if a.starts_with("--out=") => {}
                    a => v.push(a.to_owned()),
                }
            }
        } else {
            if self.quick {
                v.push("--quick".into());
            }
            v.push("--phases multi-instance".into());
        }
        v.join(" ")
    }

    /// The study these flags describe.
    pub fn config(&self) -> Result<StudyConfig, String> {
        let mut cfg = if self.quick {
            StudyConfig::quick()
        } else {
            StudyConfig::full()
        };
        cfg.out = self.out.clone();
        cfg.server = self.server.config();
        cfg.supervised_hand_off = self.server.hand_off(true);
        cfg.supervised_hand_off_idle = self.server.hand_off_idle(true);
        cfg.progress = !self.no_progress;
        if let Some(m) = &self.modes {
            cfg.modes = m.clone();
        }
        if let Some(names) = &self.attacks {
            cfg.attacks = names
                .iter()
                .map(|n| {
                    study::attack(n).ok_or_else(|| {
                        format!("no attack `{n}`; `curfew-lab list` shows the attacks")
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(rate) = self.attack_rate {
            if !(rate > 0.0 && rate <= 1000.0) {
                return Err(format!("--attack-rate {rate} is outside (0, 1000]"));
            }
            for a in &mut cfg.attacks {
                a.rate = rate;
            }
        }
        cfg.baseline = self.baseline.unwrap_or(cfg.baseline);
        cfg.window = self.window.unwrap_or(cfg.window);
        cfg.recovery = self.recovery.unwrap_or(cfg.recovery);
        cfg.connections = self.connections.unwrap_or(cfg.connections);
        if let Some(b) = self.bucket {
            if b < Duration::from_millis(1) || b > Duration::from_secs(10) {
                return Err(format!("--bucket {b:?} is outside [1ms, 10s]"));
            }
            cfg.bucket = b;
        }
        cfg.benign_timeout = self.benign_timeout.unwrap_or(cfg.benign_timeout);
        cfg.repeats = self.repeats.map_or(cfg.repeats, |n| n as usize);
        if let Some(phases) = &self.phases {
            cfg.attack_phases = phases.contains(&StudyPhase::Attacks);
            if !phases.contains(&StudyPhase::MultiInstance) {
                cfg.multi = None;
            }
        }
        if let Some(m) = &mut cfg.multi {
            if let Some(n) = self.identities {
                m.identities = n as usize;
            }
            m.command = self.command();
        }
        if !cfg.attack_phases && cfg.multi.is_none() {
            return Err("--phases names no part of the study".into());
        }
        if cfg.connections == 0 {
            return Err("the study needs at least one connection".into());
        }
        if cfg.attack_phases && (cfg.modes.is_empty() || cfg.attacks.is_empty()) {
            return Err("the study needs at least one mode and one attack".into());
        }
        if cfg.window.is_zero() || cfg.baseline.is_zero() {
            return Err("--baseline and --window must be longer than zero".into());
        }
        Ok(cfg)
    }
}

/// A part of the study, for `study --phases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StudyPhase {
    /// Every attack against every mode.
    Attacks,
    /// Two servers under one attacker who alternates between them and
    /// rotates identities, with per-instance and with shared (Redis)
    /// policies.
    MultiInstance,
}

/// `curfew-lab serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// How the server runs its handlers.
    #[arg(long, value_enum, default_value = "curfew")]
    pub mode: Mode,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
    /// Take the client's identity from the `x-client-id` header (for a
    /// load generator that simulates many clients). Without it the client
    /// is the peer's IP address: a header anyone can write must not name
    /// the client that strikes and cool-offs are charged to.
    #[arg(long)]
    pub trust_client_header: bool,
    /// List per-client counters on `/metrics` to every peer, not only to
    /// loopback ones.
    #[arg(long)]
    pub public_metrics: bool,
    /// Serve from this many worker processes under `curfew-supervisor`,
    /// which recycles a worker at its first written-off thread (0: one
    /// process, no supervisor; `--mode curfew-supervised` implies 1).
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// With `--processes`: how long a recycled worker may finish its
    /// requests in flight before it is killed.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub drain_deadline: Duration,
    /// With `--processes`: also recycle a worker whose resident memory
    /// passes this many MiB.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rss_limit_mib: Option<u64>,
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            trust_client_header: self.trust_client_header,
            public_metrics: self.public_metrics,
            ..self.server.config()
        }
    }
}

/// Parses a duration as [`parse_duration`] does, or `off` for no limit
/// (returned as zero).
pub fn parse_limit(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "off" => Ok(Duration::ZERO),
        s => parse_duration(s),
    }
}

/// Parses `250ms`, `1s`, `1.5s` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 1s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("`{s}` needs a unit: ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Runs the command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Study(args) => run_study(&args),
        Command::Serve(args) => serve(&args),
        Command::List => {
            print!("{}", list());
            ExitCode::SUCCESS
        }
    }
}

fn run_study(args: &StudyArgs) -> ExitCode {
    let cfg = match args.config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("curfew-lab: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.attack_phases {
        eprintln!(
            "curfew-lab: {} attacks × {} modes, {:.1} s per phase; results in {}",
            cfg.attacks.len(),
            cfg.modes.len(),
            cfg.phase_len().as_secs_f64(),
            cfg.out.display()
        );
    }
    if let Some(m) = &cfg.multi {
        eprintln!(
            "curfew-lab: multi-instance phase, 2 variants × {} run(s) of {:.1} s and up to {} \
             probes; results in {}",
            cfg.repeats.max(1),
            (m.baseline + m.window).as_secs_f64(),
            m.probes,
            cfg.out.display()
        );
    }
    match study::run(&cfg) {
        Ok(outcome) => {
            println!("{outcome}");
            println!("report: {}", outcome.report.display());
            if !outcome.phases.is_empty() {
                println!(
                    "plot:   {}\ncsv:    {}",
                    outcome.plot.display(),
                    outcome.csv.display()
                );
            }
            println!("took {:.1} s", outcome.elapsed.as_secs_f64());
            if outcome.handlers_left > 0 {
                eprintln!(
                    "curfew-lab: {} handler(s) still stuck; exiting without waiting for them",
                    outcome.handlers_left
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("curfew-lab: study failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    // Warnings to stderr (`RUST_LOG` overrides): connections shed at a cap,
    // queue timeouts, recycles. Only `serve` installs it: the study's
    // in-process servers stay quiet.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,curfew_supervisor=info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let processes = match (args.mode, args.processes) {
        (Mode::CurfewSupervised, 0) => 1,
        (_, n) => n,
    };
    if processes > 0 {
        return serve_supervised(args, processes);
    }
    let server = match Server::start(args.mode, &args.config(), args.addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("curfew-lab: cannot serve on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    println!(
        "curfew-lab: serving in {} mode on http://{} (GET / lists the routes); Ctrl-C stops",
        server.mode(),
        server.addr()
    );
    let signal = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| rt.block_on(tokio::signal::ctrl_c()));
    if let Err(e) = signal {
        eprintln!("curfew-lab: cannot wait for Ctrl-C: {e}");
    }
    server.stop_spinning();
    let s = server.shutdown(Duration::from_secs(2));
    if s.handlers_left > 0 {
        eprintln!(
            "curfew-lab: {} handler(s) still running; exiting without them",
            s.handlers_left
        );
    }
    ExitCode::SUCCESS
}

/// `serve --processes N`: this process supervises; re-executed, it is one
/// of the workers.
fn serve_supervised(args: &ServeArgs, processes: usize) -> ExitCode {
    use curfew_supervisor::Role;
    if !args.mode.is_curfew() {
        eprintln!(
            "curfew-lab: --processes needs a curfew mode: the supervisor recycles workers by \
             their written-off threads, and drains them through curfew_http's graceful shutdown"
        );
        return ExitCode::from(2);
    }
    let mut config = curfew_supervisor::Config::new(args.addr)
        .processes(processes)
        .drain_deadline(args.drain_deadline);
    if let Some(mib) = args.rss_limit_mib {
        config = config.recycle_at_rss(mib << 20);
    }
    match curfew_supervisor::role(config) {
        Err(e) => {
            eprintln!("curfew-lab: {e}");
            ExitCode::from(2)
        }
        Ok(Role::Worker(worker)) => serve_worker(args, &worker),
        Ok(Role::Supervisor(sup)) => {
            println!(
                "curfew-lab: serving in {} mode on http://{} from {processes} worker process(es) \
                 and a warm spare (GET / lists the routes); Ctrl-C drains and stops",
                args.mode,
                sup.local_addr()
            );
            match sup.run() {
                Ok(s) => {
                    println!(
                        "curfew-lab: supervisor stopped: started={} recycled={} \
                         killed_while_draining={} restarts={}",
                        s.started, s.recycled, s.killed_while_draining, s.restarts
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("curfew-lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One worker of `serve --processes N`: starts its server, waits for its
/// turn (a warm spare waits here) before accepting on the inherited socket,
/// and exits once drained.
fn serve_worker(args: &ServeArgs, worker: &curfew_supervisor::Worker) -> ExitCode {
    let listener = match worker.listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "curfew-lab: worker {}: no listening socket: {e}",
                worker.id()
            );
            return ExitCode::FAILURE;
        }
    };
    // Runtimes up before the turn, so that a warm spare serves at once.
    let (go, turn) = tokio::sync::oneshot::channel::<()>();
    let turn = async move {
        let _ = turn.await;
    };
    let cfg = ServerConfig {
        hand_off_long_polls: args.server.hand_off(true),
        hand_off_idle: args.server.hand_off_idle(true),
        ..args.config()
    };
    let (server, drained) = match Server::start_on(args.mode, &cfg, listener, turn, worker.drain())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("curfew-lab: worker {}: cannot serve: {e}", worker.id());
            return ExitCode::FAILURE;
        }
    };
    if let Some(rt) = server.probe().runtime() {
        worker.watch(rt);
    }
    worker.wait_for_turn();
    let _ = go.send(());
    // Until the supervisor asks for a drain and the requests in flight are
    // answered; then the process ends, and its stuck threads with it.
    let _ = drained.recv();
    worker.exit(0)
}

fn list() -> String {
    let mut out = String::from(
        "attack               vector               class              kind        form    rate  in\n",
    );
    for a in study::catalog() {
        let mut tags = Vec::new();
        if study::DEFAULT_ATTACKS.contains(&a.label.as_str()) {
            tags.push("default");
        }
        if study::QUICK_ATTACKS.contains(&a.label.as_str()) {
            tags.push("quick");
        }
        out += &format!(
            "{:<20} {:<20} {:<18} {:<11} {:<7} {:>4}  {}\n",
            a.label,
            a.vector.name,
            a.vector.class.as_str(),
            a.vector.kind.as_str(),
            a.form.as_str(),
            a.rate,
            tags.join(",")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "curfew-lab",
            "study",
            "--quick",
            "--modes",
            "tokio,curfew-policy",
            "--attacks",
            "read-fifo,fancy-regex",
            "--poll-budget",
            "50ms",
        ])
        .unwrap();
        let Command::Study(args) = cli.command else {
            panic!("not a study")
        };
        let cfg = args.config().unwrap();
        assert_eq!(cfg.modes, [Mode::Tokio, Mode::CurfewPolicy]);
        assert_eq!(cfg.attacks[1].label, "fancy-regex");
        assert_eq!(cfg.server.poll_budget, Duration::from_millis(50));
        assert!(list().contains("read-fifo-pool"));
    }

    /// `curfew-lab study --quick EXTRA`, parsed into its configuration.
    fn quick_study(extra: &[&str]) -> Result<StudyConfig, String> {
        let mut argv = vec!["curfew-lab", "study", "--quick"];
        argv.extend_from_slice(extra);
        let Command::Study(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not a study")
        };
        args.config()
    }

    #[test]
    fn the_hand_off_is_on_under_the_supervisor_unless_the_flag_says_otherwise() {
        let study = |extra: &[&str]| {
            let cfg = quick_study(extra).unwrap();
            (cfg.server.hand_off_long_polls, cfg.supervised_hand_off)
        };
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(study(&[]), (None, Some(SUPERVISED_HAND_OFF)));
        assert_eq!(study(&["--hand-off-long-polls", "off"]), (None, None));
        assert_eq!(study(&["--hand-off-long-polls", "5ms"]), (ms(5), ms(5)));
        // The supervised child gets its threshold as a flag.
        let flags = crate::study::server_flags(&ServerConfig {
            hand_off_long_polls: ms(10),
            ..ServerConfig::default()
        });
        let at = flags.iter().position(|f| f == "--hand-off-long-polls");
        assert_eq!(at.map(|i| flags[i + 1].as_str()), Some("10ms"));
    }

    #[test]
    fn handed_off_polls_go_to_the_idle_class_under_the_supervisor_unless_told() {
        let study = |extra: &[&str]| {
            let cfg = quick_study(extra).unwrap();
            (cfg.server.hand_off_idle, cfg.supervised_hand_off_idle)
        };
        assert_eq!(study(&[]), (false, true));
        assert_eq!(study(&["--hand-off-class", "nice"]), (false, false));
        assert_eq!(study(&["--hand-off-class", "idle"]), (true, true));
        let bad = ["curfew-lab", "study", "--hand-off-class", "realtime"];
        assert!(Cli::try_parse_from(bad).is_err());
        let class = |idle| {
            let flags = crate::study::server_flags(&ServerConfig {
                hand_off_idle: idle,
                ..ServerConfig::default()
            });
            let at = flags.iter().position(|f| f == "--hand-off-class");
            at.map(|i| flags[i + 1].clone())
        };
        assert_eq!(class(true).as_deref(), Some("idle"));
        assert_eq!(class(false).as_deref(), Some("nice"));
    }

    #[test]
    fn the_bucket_width_is_checked() {
        assert_eq!(quick_study(&[]).unwrap().bucket, Duration::from_millis(250));
        let narrow = quick_study(&["--bucket", "10ms"]).unwrap();
        assert_eq!(narrow.bucket, Duration::from_millis(10));
        for bad in ["0ms", "0.5ms", "11s"] {
            let err = quick_study(&["--bucket", bad]);
            assert!(err.is_err(), "--bucket {bad} was accepted");
        }
    }

    #[test]
    fn phases_select_the_parts_of_the_study() {
        let parse = quick_study;
        let both = parse(&[]).unwrap();
        assert!(both.attack_phases && both.multi.is_some());
        let multi = parse(&["--phases", "multi-instance", "--identities", "6"]).unwrap();
        assert!(!multi.attack_phases);
        assert_eq!(multi.phase_count(), 0);
        let m = multi.multi.expect("the multi-instance phase");
        assert_eq!(m.identities, 6);
        assert!(
            m.command.contains("--phases multi-instance"),
            "{}",
            m.command
        );
        let attacks = parse(&["--phases", "attacks"]).unwrap();
        assert!(attacks.attack_phases && attacks.multi.is_none());
        assert!(Cli::try_parse_from(["curfew-lab", "study", "--phases", "nothing"]).is_err());
    }

    #[test]
    fn serve_trusts_the_client_header_only_when_told() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["curfew-lab", "serve"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not serve")
            };
            args.config()
        };
        let plain = parse(&[]);
        assert!(!plain.trust_client_header && !plain.public_metrics);
        assert_eq!(plain.header_read_timeout, Some(Duration::from_secs(10)));
        let told = parse(&[
            "--trust-client-header",
            "--idle-timeout",
            "off",
            "--max-body-in-flight-mib",
            "0",
        ]);
        assert!(told.trust_client_header);
        assert_eq!((told.idle_timeout, told.max_body_in_flight), (None, None));
    }
}
