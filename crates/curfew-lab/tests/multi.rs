//! The study's multi-instance phase, against a real `redis-server` and two
//! real `curfew-lab serve` processes on 127.0.0.1: an attacker alternating
//! between the instances gets fewer poisoned requests through when they
//! share their policy, and a cool-off reaches the other instance.

use std::time::{Duration, Instant};

use curfew_lab::multi::{MultiConfig, Variant};
use curfew_lab::study::{self, Payload, StudyConfig};

fn out_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("curfew-lab-{name}-{}", std::process::id()))
}

#[test]
fn shared_policy_admits_fewer_poisoned_requests_and_propagates_cool_offs() {
    let out = out_dir("multi");
    let _ = std::fs::remove_dir_all(&out);
    let mut multi = MultiConfig::quick();
    // A smaller regex than the release study's: several times the 100 ms
    // poll budget in a debug build, and over soon after, so that the
    // threads it hijacks come back even on a loaded machine.
    multi.attack.payload = Payload::Size(16);
    // A generous bound: the instances run at the lowest priority of a
    // busy machine.
    multi.probe_bound = Duration::from_secs(5);
    multi.baseline = Duration::from_millis(600);
    multi.probes = 2;
    let bound = multi.probe_bound;
    let cfg = StudyConfig {
        out: out.clone(),
        progress: false,
        connections: 8,
        server_exe: Some(env!("CARGO_BIN_EXE_curfew-lab").into()),
        attack_phases: false,
        multi: Some(multi),
        ..StudyConfig::quick()
    };
    let started = Instant::now();
    let outcome = study::run(&cfg).expect("the study runs");
    assert!(outcome.phases.is_empty(), "only the multi-instance phase");
    let m = outcome.multi.expect("the multi-instance phase ran");
    assert!(
        m.skipped.is_none(),
        "the phase needs redis-server (Debian: apt-get install redis-server): {:?}",
        m.skipped
    );
    assert_eq!(
        outcome.handlers_left, 0,
        "a server process had to be killed"
    );
    let memory = m
        .of(Variant::Memory)
        .next()
        .expect("a memory run")
        .summary();
    let shared = m
        .of(Variant::Shared)
        .next()
        .expect("a shared run")
        .summary();
    let table = m.table(false);

    // Same attack against both variants.
    assert_eq!(memory.sent, shared.sent, "{table}");
    assert!(memory.sent >= 12, "{table}");
    // A poisoned request that is answered gets a timeout or a refusal.
    // (On an overloaded machine some answers are lost to connection
    // resets; the table counts them apart.)
    for r in &m.runs {
        for s in &r.shots {
            assert!(
                matches!(s.sample.status, None | Some(503 | 429)),
                "{s:?}\n{table}"
            );
        }
    }
    // Shared strikes: each identity is refused after its strikes over both
    // instances, not after its strikes on each. Per-instance memory refuses
    // no one in this window (each identity meets each instance twice), and
    // lets every poisoned request in: a `503`, or, on an overloaded
    // machine, a connection the overloaded server dropped.
    assert!(
        shared.refused > memory.refused,
        "shared Redis refused {}, per-instance memory {}\n{table}",
        shared.refused,
        memory.refused
    );
    assert!(
        shared.admitted < memory.admitted + memory.other,
        "shared Redis admitted {} poisoned requests, per-instance memory {} (+{} lost)\n{table}",
        shared.admitted,
        memory.admitted,
        memory.other
    );
    assert!(shared.refused > 0, "{table}");
    // The benign clients were served on both instances.
    assert!(memory.calm_rps > 0.0 && shared.calm_rps > 0.0, "{table}");
    assert!(shared.attack_rps > 0.0, "{table}");

    // Propagation: measured on every probe with the shared store, within
    // the bound; never with per-instance memory.
    let runs: Vec<_> = m.of(Variant::Shared).collect();
    let landed: Vec<_> = runs[0].propagation.iter().filter(|p| p.landed).collect();
    assert!(!landed.is_empty(), "no probe's cool-off landed\n{table}");
    let reached: Vec<_> = landed.iter().filter_map(|p| p.reached).collect();
    assert!(
        !reached.is_empty(),
        "no cool-off reached the other instance within {bound:?}: {table}"
    );
    assert!(reached.iter().all(|&d| d <= bound), "{reached:?}");
    let mem_run = m.of(Variant::Memory).next().unwrap();
    assert!(
        mem_run.propagation.iter().all(|p| p.reached.is_none()),
        "{:?}",
        mem_run.propagation
    );

    let report = std::fs::read_to_string(&outcome.report).unwrap();
    assert!(report.contains("Multi-instance"), "{report}");
    assert!(report.contains("--phases multi-instance"), "{report}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the phase took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Without `redis-server` the phase is skipped with a reason, and the
/// study still succeeds.
#[test]
fn multi_instance_phase_is_skipped_without_redis() {
    let out = out_dir("multi-skip");
    let res = std::process::Command::new(env!("CARGO_BIN_EXE_curfew-lab"))
        .args([
            "study",
            "--quick",
            "--phases",
            "multi-instance",
            "--no-progress",
        ])
        .arg("--out")
        .arg(&out)
        .env("PATH", out.join("no-such-dir"))
        .output()
        .expect("run curfew-lab");
    let stderr = String::from_utf8_lossy(&res.stderr);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success(), "{stderr}\n{stdout}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("multi-instance phase skipped"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(stdout.contains("skipped"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
