//! The line protocol on the control socket between the supervisor and a
//! worker: one short text line per message, so that a human reading an
//! `strace` can follow it.
//!
//! Worker to supervisor:
//! * `ready`: the worker's runtimes are up; it waits to be told to serve;
//! * `health <hijacked> <abandoned> <overdue> <threads>`: the written-off
//!   threads right now, `<threads>` comma-separated `<tid>:<cpu ns>` (the
//!   CPU time each has used, read by the worker from the thread's CPU
//!   clock; 0 if unknown) or `-` for none. Sent every health interval, so it
//!   is also the worker's heartbeat.
//!
//! Supervisor to worker: `serve` (start accepting) and `drain` (stop
//! accepting, finish what is in flight, exit).

use std::time::Duration;

/// A message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    Ready,
    Health(Health),
}

/// One health report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Health {
    /// Event threads hijacked by a poll over budget.
    pub(crate) hijacked: usize,
    /// Pool threads abandoned by a job over budget.
    pub(crate) abandoned: usize,
    /// Threads whose task timed out but which are held at the cap.
    pub(crate) overdue: usize,
    /// Their OS thread ids, each with the CPU time it has used (`None`:
    /// unknown). The worker reads these clocks itself: the supervisor looks
    /// nothing up under `/proc/<pid>/task` (see `curfew::health`).
    pub(crate) threads: Vec<(i64, Option<Duration>)>,
}

impl Health {
    pub(crate) fn written_off(&self) -> usize {
        self.hijacked + self.abandoned + self.overdue
    }

    pub(crate) fn encode(&self) -> String {
        let threads = if self.threads.is_empty() {
            "-".to_string()
        } else {
            self.threads
                .iter()
                .map(|(tid, cpu)| format!("{tid}:{}", cpu.map_or(0, |c| c.as_nanos())))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "health {} {} {} {threads}\n",
            self.hijacked, self.abandoned, self.overdue
        )
    }
}

impl Report {
    pub(crate) fn parse(line: &str) -> Option<Report> {
        let mut parts = line.split_ascii_whitespace();
        match parts.next()? {
            "ready" => Some(Report::Ready),
            "health" => {
                let hijacked = parts.next()?.parse().ok()?;
                let abandoned = parts.next()?.parse().ok()?;
                let overdue = parts.next()?.parse().ok()?;
                let threads = match parts.next()? {
                    "-" => Vec::new(),
                    list => list
                        .split(',')
                        .map(|t| {
                            let (tid, ns) = t.split_once(':')?;
                            let ns: u64 = ns.parse().ok()?;
                            Some((
                                tid.parse().ok()?,
                                (ns > 0).then(|| Duration::from_nanos(ns)),
                            ))
                        })
                        .collect::<Option<Vec<_>>>()?,
                };
                Some(Report::Health(Health {
                    hijacked,
                    abandoned,
                    overdue,
                    threads,
                }))
            }
            _ => None,
        }
    }
}

/// A command to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Serve,
    Drain,
}

impl Command {
    pub(crate) fn encode(self) -> &'static [u8] {
        match self {
            Command::Serve => b"serve\n",
            Command::Drain => b"drain\n",
        }
    }

    pub(crate) fn parse(line: &str) -> Option<Command> {
        match line.trim() {
            "serve" => Some(Command::Serve),
            "drain" => Some(Command::Drain),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_round_trips() {
        for h in [
            Health::default(),
            Health {
                hijacked: 2,
                abandoned: 1,
                overdue: 0,
                threads: vec![
                    (17, Some(Duration::from_nanos(1_500_000))),
                    (4242, None),
                    (9, Some(Duration::from_secs(3))),
                ],
            },
        ] {
            assert_eq!(Report::parse(&h.encode()), Some(Report::Health(h)));
        }
        assert_eq!(Report::parse("ready\n"), Some(Report::Ready));
        assert_eq!(Report::parse("health 1 x 0 -"), None);
        assert_eq!(Report::parse("health 1 0 0 1:0,,2:0"), None);
        assert_eq!(Report::parse("health 1 0 0 17"), None, "no CPU time");
        assert_eq!(Report::parse("health 1 0 0 17:x"), None);
        assert_eq!(Report::parse(""), None);
        assert_eq!(Command::parse("drain\n"), Some(Command::Drain));
        assert_eq!(Command::parse("serve"), Some(Command::Serve));
        assert_eq!(Command::parse("dance"), None);
    }
}
