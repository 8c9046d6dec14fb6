//! The quick study runs end to end and writes its report, plot and CSV.

use std::time::Duration;

use curfew_lab::server::Mode;
use curfew_lab::study::{self, StudyConfig};

#[test]
fn quick_study_writes_report_and_plot() {
    let out = std::env::temp_dir().join(format!("curfew-lab-study-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = StudyConfig {
        out: out.clone(),
        progress: false,
        // curfew-supervised serves from a `curfew-lab serve` child.
        server_exe: Some(env!("CARGO_BIN_EXE_curfew-lab").into()),
        // The multi-instance phase has its own test (tests/multi.rs).
        multi: None,
        ..StudyConfig::quick()
    };
    assert!(cfg.modes.contains(&Mode::CurfewSupervised));
    assert!(cfg.phase_len() * cfg.phase_count() as u32 <= Duration::from_secs(30));
    let outcome = study::run(&cfg).expect("the study runs");
    assert_eq!(outcome.phases.len(), cfg.attacks.len() * cfg.modes.len());
    assert_eq!(outcome.handlers_left, 0, "a handler outlived the study");

    let report = std::fs::read_to_string(&outcome.report).unwrap();
    let svg = std::fs::read_to_string(&outcome.plot).unwrap();
    let csv = std::fs::read_to_string(&outcome.csv).unwrap();
    assert!(report.contains("| attack"), "{report}");
    assert!(report.contains("timeline.svg"));
    assert!(svg.starts_with("<svg") && svg.contains("curfew-policy"));
    assert!(csv.lines().count() > 10);

    for p in &outcome.phases {
        let s = p.summary();
        assert!(
            s.base_rps > 0.0,
            "{} {}: no benign answers before the attack",
            p.mode,
            p.attack.label
        );
        assert!(
            s.attacks > 0,
            "{} {}: no attack sent",
            p.mode,
            p.attack.label
        );
        if p.mode.is_curfew() {
            // Every attack request is answered, by a timeout (503) or a
            // refusal (429).
            assert!(
                p.attacks
                    .iter()
                    .all(|a| matches!(a.status, Some(503 | 429)) && a.retry_after),
                "{} {}: {}",
                p.mode,
                p.attack.label,
                s.answers
            );
            if p.mode == Mode::CurfewSupervised {
                // In a child process: the supervisor's counts instead.
                assert!(p.curfew.is_none());
                let c = p.supervisor.expect("the supervisor's summary");
                assert!(c.recycled > 0, "{}: no worker recycled", p.attack.label);
                assert_eq!(c.restarts, 0, "{}", p.attack.label);
                continue;
            }
            let c = p.curfew.expect("curfew counters");
            assert!(c.event_timeouts > 0, "{} {}", p.mode, p.attack.label);
        } else if p.mode == Mode::Tokio {
            assert!(p.curfew.is_none());
        }
    }
    let table = outcome.to_string();
    assert!(
        table.contains("infinite-loop") && table.contains("read-fifo"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
