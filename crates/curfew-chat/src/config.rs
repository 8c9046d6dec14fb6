//! Settings: the command line ([`Options`]) and the validated
//! configuration a [`Server`](crate::Server) runs with ([`ChatConfig`]).

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// The shortest HS256 secret accepted: 32 bytes, the hash's output size
/// (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// A message rate: `count` messages per `period`, written `1/s`, `30/m`,
/// `5/h` or `2/500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages allowed per period.
    pub count: NonZeroU32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// `count` messages per `period`.
    pub fn new(count: NonZeroU32, period: Duration) -> Self {
        Self { count, period }
    }

    /// The time between two messages at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.period / self.count.get()
    }
}

impl FromStr for Rate {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(
                "rate",
                format!("`{s}`: {why} (expected e.g. `1/s`, `30/m`, `2/500ms`)"),
            )
        };
        let (count, per) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        let count = NonZeroU32::new(count).ok_or_else(|| bad("the count must be at least 1"))?;
        let period = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| bad("unknown period"))?,
        };
        if period.is_zero() || period / count.get() < Duration::from_micros(1) {
            return Err(bad("the interval between messages is under a microsecond"));
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.period.subsec_nanos() == 0 => write!(f, "{}/m", self.count),
            3600 if self.period.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            _ => write!(
                f,
                "{}/{}",
                self.count,
                humantime::format_duration(self.period)
            ),
        }
    }
}

/// A setting that cannot be used, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }

    /// The setting at fault, as on the command line without the dashes.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid --{}: {}",
            self.setting.replace('_', "-"),
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Everything a [`Server`](crate::Server) needs; [`ChatConfig::new`] gives
/// the defaults, [`validate`](Self::validate) checks them.
#[derive(Clone)]
pub struct ChatConfig {
    /// The HS256 secret tokens are signed with; at least 32 bytes.
    pub jwt_secret: Vec<u8>,
    /// Origins allowed to open a WebSocket (`https://host[:port]`). Empty:
    /// no allow-list, so only same-origin pages and clients that send no
    /// `Origin` (non-browser clients) are admitted.
    pub allowed_origins: Vec<String>,
    /// The largest text frame handled; larger ones get `too_large`.
    pub max_message_bytes: usize,
    /// The largest frame read at all; a larger one closes the connection
    /// with `1009` before it is buffered. Bounds the memory of one read.
    pub max_frame_bytes: usize,
    /// The per-user message rate.
    pub rate: Rate,
    /// Messages a user may send at once on top of the rate.
    pub burst: NonZeroU32,
    /// Open WebSockets per client IP.
    pub max_connections_per_ip: usize,
    /// Open WebSockets in all.
    pub max_connections: usize,
    /// Frames queued for one connection before it counts as too slow and
    /// is closed with `1013`.
    pub outbound_queue: usize,
    /// Messages kept per room for search.
    pub history: usize,
    /// Rooms that may exist at once.
    pub max_rooms: usize,
    /// Rooms one connection may be in.
    pub max_rooms_per_connection: usize,
    /// A Redis URL for the shared rate limit (`redis://host:port/`).
    pub redis: Option<String>,
    /// The poll budget of every message handler. `None`: handlers run
    /// inline on tokio with no budget (for comparison only).
    pub poll_budget: Option<Duration>,
    /// The poll budget of the HTTP handlers (the page, the token and the
    /// handshake), which run under `CurfewLayer`. They do little work, so
    /// this only has to be generous enough not to trip on a loaded machine.
    pub http_poll_budget: Duration,
    /// Timeouts after which a user is refused (curfew's client policy).
    /// With searches in worker processes ([`search_process`](Self::search_process))
    /// an overrun costs nothing after its budget, so strikes only bound how
    /// often an attacker may spend a budget; with searches in process each
    /// overrun leaves a thread spinning until its regex returns, and each
    /// strike allowed costs every room latency.
    pub strikes: u32,
    /// How long a user with `strikes` timeouts is refused.
    pub cool_off: Duration,
    /// Curfew event threads that run the handlers.
    pub event_threads: usize,
    /// Threads running written-off (over-budget) handlers that may exist at
    /// once, for the event threads and again for the worker pool (where
    /// searches run); they run at idle priority until their poll or job
    /// returns.
    pub max_hijacked_threads: usize,
    /// Whether written-off threads run at idle priority (`SCHED_IDLE`).
    pub demote_hijacked_threads: bool,
    /// How far below the event threads the worker pool (where searches
    /// run) runs, as a nice increment 0-19: a search, poisoned or not,
    /// then cannot slow the rooms' messages by taking their cores.
    pub pool_nice: i32,
    /// Run each search in a process of its own: this executable, started
    /// as a one-shot search worker (see [`isolate`](crate::isolate)), and
    /// killed when the search overruns its budget, so that a poisoned
    /// search leaves no thread spinning. `None` (the default for a
    /// `ChatConfig` built in code) runs searches on the worker pool in this
    /// process. The `curfew-chat` binary sets it to itself unless given
    /// `--search-in-process`. The executable must call
    /// [`isolate::run_worker_if_asked`](crate::isolate::run_worker_if_asked)
    /// first thing in `main`.
    pub search_process: Option<std::path::PathBuf>,
    /// Tokio worker threads that serve the connections.
    pub io_threads: usize,
    /// How long a closing connection may take to send its close frame.
    pub close_timeout: Duration,
    /// Serve `/dev/token`, which signs a token for any user name.
    pub dev: bool,
}

impl fmt::Debug for ChatConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatConfig")
            .field(
                "jwt_secret",
                &format_args!("<{} bytes>", self.jwt_secret.len()),
            )
            .field("allowed_origins", &self.allowed_origins)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("rate", &format_args!("{}", self.rate))
            .field("burst", &self.burst)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_connections", &self.max_connections)
            .field("outbound_queue", &self.outbound_queue)
            .field("history", &self.history)
            .field("max_rooms", &self.max_rooms)
            .field("max_rooms_per_connection", &self.max_rooms_per_connection)
            .field("redis", &self.redis.as_ref().map(|_| "<set>"))
            .field("poll_budget", &self.poll_budget)
            .field("http_poll_budget", &self.http_poll_budget)
            .field("strikes", &self.strikes)
            .field("cool_off", &self.cool_off)
            .field("event_threads", &self.event_threads)
            .field("max_hijacked_threads", &self.max_hijacked_threads)
            .field("demote_hijacked_threads", &self.demote_hijacked_threads)
            .field("pool_nice", &self.pool_nice)
            .field("search_process", &self.search_process)
            .field("io_threads", &self.io_threads)
            .field("close_timeout", &self.close_timeout)
            .field("dev", &self.dev)
            .finish()
    }
}

impl ChatConfig {
    /// The defaults, with `jwt_secret`.
    pub fn new(jwt_secret: Vec<u8>) -> Self {
        Self {
            jwt_secret,
            allowed_origins: Vec::new(),
            max_message_bytes: 4096,
            max_frame_bytes: 2 << 20,
            rate: Rate::new(NonZeroU32::MIN, Duration::from_secs(1)),
            burst: NonZeroU32::new(5).expect("5 is not zero"),
            max_connections_per_ip: 20,
            max_connections: 10_000,
            outbound_queue: 256,
            history: 200,
            max_rooms: 1000,
            max_rooms_per_connection: 8,
            redis: None,
            poll_budget: Some(Duration::from_millis(50)),
            http_poll_budget: Duration::from_secs(1),
            strikes: 3,
            cool_off: Duration::from_secs(30),
            event_threads: 2,
            max_hijacked_threads: 32,
            demote_hijacked_threads: true,
            pool_nice: 10,
            search_process: None,
            io_threads: 2,
            close_timeout: Duration::from_secs(10),
            dev: false,
        }
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::new(
                "jwt_secret",
                format!(
                    "{} bytes; an HS256 secret needs at least {MIN_SECRET_BYTES} \
                     (set --jwt-secret or CURFEW_CHAT_JWT_SECRET)",
                    self.jwt_secret.len()
                ),
            ));
        }
        for origin in &self.allowed_origins {
            check_origin(origin)?;
        }
        let positive = [
            ("max_message_bytes", self.max_message_bytes),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_connections", self.max_connections),
            ("outbound_queue", self.outbound_queue),
            ("history", self.history),
            ("max_rooms", self.max_rooms),
            ("max_rooms_per_connection", self.max_rooms_per_connection),
            ("event_threads", self.event_threads),
            ("io_threads", self.io_threads),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        if self.max_frame_bytes < self.max_message_bytes {
            return Err(ConfigError::new(
                "max_frame_bytes",
                format!(
                    "{} is below --max-message-bytes ({})",
                    self.max_frame_bytes, self.max_message_bytes
                ),
            ));
        }
        if self.poll_budget.is_some_and(|b| b.is_zero()) {
            return Err(ConfigError::new("poll_budget", "must be greater than zero"));
        }
        if self.http_poll_budget.is_zero() {
            return Err(ConfigError::new(
                "http_poll_budget",
                "must be greater than zero",
            ));
        }
        if self.strikes == 0 {
            return Err(ConfigError::new("strikes", "must be at least 1"));
        }
        if !(0..=19).contains(&self.pool_nice) {
            return Err(ConfigError::new(
                "pool_nice",
                format!("{} is not a nice increment from 0 to 19", self.pool_nice),
            ));
        }
        if let Some(url) = &self.redis {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(ConfigError::new(
                    "redis",
                    "expected redis://host:port/ (or rediss://, unix://)",
                ));
            }
        }
        Ok(())
    }
}

fn check_origin(origin: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            "allowed_origin",
            format!("`{origin}`: {why} (expected scheme://host[:port], e.g. https://chat.example)"),
        )
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(bad("an origin has a host and no path"));
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 50ms, 2s)"))
}

/// The command line of `curfew-chat`. Every option also reads an
/// environment variable, named in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "curfew-chat",
    version,
    about = "A WebSocket chat served on curfew"
)]
pub struct Options {
    /// Address to listen on.
    #[arg(long, env = "CURFEW_CHAT_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// HS256 secret that tokens are signed with (at least 32 bytes).
    /// Required unless --dev, which makes up one per run.
    #[arg(long, env = "CURFEW_CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// An origin allowed to open a WebSocket, e.g. `https://chat.example`
    /// (repeatable; the variable takes a comma-separated list). Without
    /// any, only same-origin pages and clients without Origin are admitted.
    #[arg(
        long = "allowed-origin",
        env = "CURFEW_CHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Largest text frame handled; larger ones are answered `too_large`.
    #[arg(long, env = "CURFEW_CHAT_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    /// Largest frame read at all; a larger one closes the connection (1009).
    #[arg(long, env = "CURFEW_CHAT_MAX_FRAME_BYTES", default_value_t = 2 << 20)]
    pub max_frame_bytes: usize,
    /// Per-user message rate: 1/s, 30/m, 2/500ms.
    #[arg(long, env = "CURFEW_CHAT_RATE", default_value = "1/s")]
    pub rate: Rate,
    /// Messages a user may send at once on top of the rate.
    #[arg(long, env = "CURFEW_CHAT_BURST", default_value_t = NonZeroU32::new(5).expect("5 is not zero"))]
    pub burst: NonZeroU32,
    /// Open WebSockets per client IP.
    #[arg(long, env = "CURFEW_CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 20)]
    pub max_connections_per_ip: usize,
    /// Open WebSockets in all.
    #[arg(long, env = "CURFEW_CHAT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Frames queued for one connection before it is closed as too slow.
    #[arg(long, env = "CURFEW_CHAT_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,
    /// Redis URL for a rate limit shared by every instance (redis://host:port/).
    #[arg(long, env = "CURFEW_CHAT_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Poll budget of every message handler.
    #[arg(long, env = "CURFEW_CHAT_POLL_BUDGET", default_value = "50ms", value_parser = parse_duration)]
    pub poll_budget: Duration,
    /// Poll budget of the HTTP handlers (page, token, handshake).
    #[arg(long, env = "CURFEW_CHAT_HTTP_POLL_BUDGET", default_value = "1s", value_parser = parse_duration)]
    pub http_poll_budget: Duration,
    /// Run handlers inline on tokio with no budget (to compare; unsafe).
    #[arg(long, env = "CURFEW_CHAT_NO_BUDGETS")]
    pub no_budgets: bool,
    /// Timeouts after which a user is refused for --cool-off.
    #[arg(long, env = "CURFEW_CHAT_STRIKES", default_value_t = 3)]
    pub strikes: u32,
    /// How long a user is refused after --strikes timeouts.
    #[arg(long, env = "CURFEW_CHAT_COOL_OFF", default_value = "30s", value_parser = parse_duration)]
    pub cool_off: Duration,
    /// Curfew event threads running the handlers.
    #[arg(long, env = "CURFEW_CHAT_EVENT_THREADS", default_value_t = 2)]
    pub event_threads: usize,
    /// Threads running over-budget handlers that may exist at once (they
    /// run at idle priority until their poll returns).
    #[arg(long, env = "CURFEW_CHAT_MAX_HIJACKED_THREADS", default_value_t = 32)]
    pub max_hijacked_threads: usize,
    /// Run written-off threads at idle priority (SCHED_IDLE): true or false.
    #[arg(long, env = "CURFEW_CHAT_DEMOTE_HIJACKED_THREADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub demote_hijacked_threads: bool,
    /// How far below the event threads the worker pool (where searches run)
    /// runs: a nice increment from 0 to 19.
    #[arg(long, env = "CURFEW_CHAT_POOL_NICE", default_value_t = 10)]
    pub pool_nice: i32,
    /// Run searches on the worker pool in this process rather than each in
    /// a search worker process of its own (which is killed when it
    /// overruns, so a poisoned search leaves no thread spinning).
    #[arg(long, env = "CURFEW_CHAT_SEARCH_IN_PROCESS")]
    pub search_in_process: bool,
    /// Tokio worker threads serving the connections.
    #[arg(long, env = "CURFEW_CHAT_IO_THREADS", default_value_t = 2)]
    pub io_threads: usize,
    /// Dev mode: serve /dev/token, which signs a token for any user name.
    /// Never in production.
    #[arg(long, env = "CURFEW_CHAT_DEV")]
    pub dev: bool,
}

impl Options {
    /// The configuration these options describe, validated.
    pub fn into_config(self) -> Result<ChatConfig, ConfigError> {
        let secret = match (self.jwt_secret, self.dev) {
            (Some(s), _) => s.into_bytes(),
            (None, true) => crate::auth::random_secret(),
            (None, false) => {
                return Err(ConfigError::new(
                    "jwt_secret",
                    "missing: set --jwt-secret or CURFEW_CHAT_JWT_SECRET (or use --dev)",
                ));
            }
        };
        let mut c = ChatConfig::new(secret);
        c.allowed_origins = self.allowed_origins;
        c.max_message_bytes = self.max_message_bytes;
        c.max_frame_bytes = self.max_frame_bytes;
        c.rate = self.rate;
        c.burst = self.burst;
        c.max_connections_per_ip = self.max_connections_per_ip;
        c.max_connections = self.max_connections;
        c.outbound_queue = self.outbound_queue;
        c.redis = self.redis;
        c.poll_budget = (!self.no_budgets).then_some(self.poll_budget);
        c.http_poll_budget = self.http_poll_budget;
        c.strikes = self.strikes;
        c.cool_off = self.cool_off;
        c.event_threads = self.event_threads;
        c.max_hijacked_threads = self.max_hijacked_threads;
        c.demote_hijacked_threads = self.demote_hijacked_threads;
        c.pool_nice = self.pool_nice;
        c.io_threads = self.io_threads;
        c.dev = self.dev;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            "1/s".parse::<Rate>().unwrap().interval(),
            Duration::from_secs(1)
        );
        assert_eq!(
            "30/m".parse::<Rate>().unwrap().interval(),
            Duration::from_secs(2)
        );
        assert_eq!(
            "2/500ms".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(250)
        );
        assert_eq!("1/s".parse::<Rate>().unwrap().to_string(), "1/s");
        for bad in ["", "1", "0/s", "x/s", "1/fortnight", "1/0s"] {
            let err = bad.parse::<Rate>().unwrap_err();
            assert_eq!(err.setting(), "rate", "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let err = ChatConfig::new(b"short".to_vec()).validate().unwrap_err();
        assert_eq!(err.setting(), "jwt_secret");
        let mut c = ChatConfig::new(vec![7; 32]);
        c.allowed_origins = vec!["chat.example".into()];
        assert_eq!(c.validate().unwrap_err().setting(), "allowed_origin");
        let mut c = ChatConfig::new(vec![7; 32]);
        c.redis = Some("http://nope".into());
        assert_eq!(c.validate().unwrap_err().setting(), "redis");
        let mut c = ChatConfig::new(vec![7; 32]);
        c.max_frame_bytes = 10;
        assert_eq!(c.validate().unwrap_err().setting(), "max_frame_bytes");
        assert!(ChatConfig::new(vec![7; 32]).validate().is_ok());
    }

    #[test]
    fn missing_secret_is_an_error_outside_dev() {
        let o = Options::try_parse_from(["curfew-chat"]).unwrap();
        if std::env::var_os("CURFEW_CHAT_JWT_SECRET").is_none() {
            assert_eq!(o.into_config().unwrap_err().setting(), "jwt_secret");
        }
        let o = Options::try_parse_from(["curfew-chat", "--dev"]).unwrap();
        assert!(o.into_config().is_ok());
    }
}
