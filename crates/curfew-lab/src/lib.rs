//! The event-handler-poisoning study: a small HTTP server under real
//! attacks, served first by plain tokio and then by curfew, with benign
//! clients measuring what the attacks cost them.
//!
//! Event handler poisoning (EHP) is one request holding one of the few
//! threads of an event-driven server, so that every other client waits.
//! Davis, Williamson and Lee showed it for Node.js and answered it with
//! first-class timeouts (Node.cure, USENIX Security 2018); their Figure 3
//! puts a small server under load from 80 clients while ReDoS and ReadDoS
//! requests arrive, and plots its throughput falling to zero without
//! timeouts and recovering with them. This crate redoes that experiment for
//! Rust, with the attacks of [`curfew_attacks`]: real crates and their real
//! worst cases.
//!
//! ```text
//! cargo run --release -p curfew-lab -- study            # about 3 minutes
//! cargo run --release -p curfew-lab -- study --quick    # under a minute
//! cargo run --release -p curfew-lab -- serve --mode tokio --addr 127.0.0.1:3000
//! cargo run --release -p curfew-lab -- study --phases multi-instance   # two servers, Redis
//! ```
//!
//! # What it does
//!
//! For each attack and each [`Mode`](server::Mode), the study starts a
//! fresh [`Server`](server::Server) on an ephemeral port of 127.0.0.1 and
//! runs a phase: benign load alone, an attack window, then recovery. The
//! benign clients are 32 closed-loop keep-alive connections (half
//! `GET /hello`, an async handler; half `GET /file`, a small read on the
//! blocking pool). The attacker posts the attack payload to
//! `/attack/{vector}` at a fixed rate (4/s for ReadDoS, as in Figure 3; 2/s
//! for the CPU vectors), each request on a new connection.
//!
//! The modes:
//!
//! * `tokio`: what a hyper or axum server usually is. A multi-thread tokio
//!   runtime with 2 workers, one task per connection, the handler inline.
//! * `curfew`: connections on tokio, every handler under curfew with 2
//!   event threads and the paper's budgets: 100 ms per poll for handlers
//!   that compute (and for blocking I/O done in async code), 1 s per job
//!   for blocking I/O on the pool. An overrun is answered `503` with
//!   `Retry-After` while the handler still runs.
//! * `curfew-policy`: as `curfew`, and a client whose requests keep timing
//!   out is refused for a while, the paper's recommended pairing of
//!   timeouts with a blacklist.
//!
//! Per phase it records benign throughput before, during and after the
//! attack, p50 and p99 latency, benign errors, what the attacker got and
//! how fast, curfew's timeouts and hijacked threads, and the process's RSS
//! and threads. It prints a table and writes, into `--out` (default
//! `lab-out/`):
//!
//! * `report.md`: the table, the setup and how to read it;
//! * `timeline.svg`: benign throughput and p99 latency over time, every
//!   mode on one axis, attack windows shaded;
//! * `timeline.csv`: the same series as numbers.
//!
//! # The multi-instance phase
//!
//! After the attack phases (or alone, with `--phases multi-instance`) the
//! study starts its own `redis-server` on a free port and two `curfew-lab
//! serve --mode curfew-policy` processes, once with a policy in memory in
//! each and once with both on that Redis (`--policy-store`). An attacker
//! alternates its poisoned requests between the two and rotates through a
//! few identities; benign clients load both. The table gives, per variant,
//! the poisoned requests admitted (answered `503` by the watchdog) and
//! refused (`429`), the benign throughput during the attack as a share of
//! the calm one, and how long a cool-off that landed on one instance took
//! to be enforced by the other, probed directly. Without `redis-server`
//! the phase is skipped with a one-line reason. See [`multi`].
//!
//! # Keeping a poisoned server from poisoning the study
//!
//! A poisoned tokio server may never recover on its own: its workers may be
//! blocked on a FIFO for good, or spinning in an infinite loop. So every
//! phase has its own runtimes, every wait is bounded, and after each phase
//! the lab releases what it can: it opens the FIFO for writing (every
//! blocked read then ends) and sets the stop flag that its copy of the
//! infinite loop checks (see [`server::spin`]; the flag is invisible to
//! both runtimes, so it changes nothing during the phase). CPU vectors run
//! at sizes that cost about 0.5 to 1 s a request ([`study::LAB_SIZES`]):
//! 5 to 10 times the poll budget, yet quick to finish. The lab then waits
//! until no handler body is running before it starts the next phase.
//!
//! # Using it as a library
//!
//! ```no_run
//! let mut cfg = curfew_lab::study::StudyConfig::quick();
//! cfg.out = "target/lab".into();
//! cfg.progress = false;
//! let outcome = curfew_lab::study::run(&cfg)?;
//! println!("{outcome}");
//! # Ok::<(), std::io::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod cli;
pub mod load;
pub mod multi;
pub mod plot;
pub mod report;
pub mod server;
pub mod stats;
pub mod study;
pub mod sys;
