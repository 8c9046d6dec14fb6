//! The binary's subcommands that finish at once.

use std::process::Command;

fn lab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_curfew-lab"))
}

#[test]
fn list_shows_the_attacks() {
    let out = lab().arg("list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for attack in curfew_lab::study::DEFAULT_ATTACKS {
        assert!(text.contains(attack), "{attack} missing from\n{text}");
    }
}

#[test]
fn bad_flags_are_refused() {
    let out = lab()
        .args(["study", "--attacks", "no-such-attack"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-attack"));
    let out = lab().args(["serve", "--mode", "nginx"]).output().unwrap();
    assert!(!out.status.success());
    // The supervisor recycles by curfew's written-off threads.
    let out = lab()
        .args([
            "serve",
            "--mode",
            "tokio",
            "--processes",
            "2",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--processes needs a curfew mode"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = lab()
        .args(["serve", "--processes", "1", "--addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_policy_store_and_quota_flags_are_refused_at_start() {
    let out = lab()
        .args(["serve", "--mode", "curfew-policy", "--cpu-quota", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CPU quota"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing listens on this port: the server refuses to start, clearly.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = lab()
        .args(["serve", "--mode", "curfew-policy", "--addr", "127.0.0.1:0"])
        .args(["--policy-store", &format!("redis://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Redis") && err.contains("cannot connect"),
        "{err}"
    );
}
