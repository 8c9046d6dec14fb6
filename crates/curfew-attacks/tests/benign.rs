//! Every handler answers benign requests correctly and quickly, rejects
//! malformed ones without panicking, and the defended regex fails fast on the
//! attack input. Bounds are generous: these run in debug builds.

use std::time::{Duration, Instant};

use curfew_attacks::{AttackError, all, bcrypt_cost, by_name, gzip, read, regex, sort, spin};

/// Far above any benign run even in a debug build on a busy machine.
const GENEROUS: Duration = Duration::from_secs(5);

fn timed(
    f: impl FnOnce() -> Result<String, AttackError>,
) -> (Result<String, AttackError>, Duration) {
    let start = Instant::now();
    let result = f();
    (result, start.elapsed())
}

fn benign(name: &str) -> String {
    let v = by_name(name).unwrap();
    let (result, elapsed) = timed(|| v.run(v.benign_size));
    assert!(elapsed < GENEROUS, "{name} took {elapsed:?}");
    result.unwrap_or_else(|e| panic!("{name} failed on its benign payload: {e}"))
}

#[test]
fn every_vector_handles_its_benign_payload() {
    for v in all() {
        let (result, elapsed) = timed(|| (v.handler)(&v.benign_payload()));
        let summary = result.unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert!(!summary.is_empty(), "{}", v.name);
        assert!(summary.len() < 200, "{}: summary too long", v.name);
        assert!(elapsed < GENEROUS, "{} took {elapsed:?}", v.name);
    }
}

#[test]
fn summaries_describe_what_was_done() {
    assert_eq!(benign("fancy-regex"), "match: false");
    assert_eq!(benign("fancy-regex-defended"), "match: false");
    assert_eq!(
        benign("ammonia-nesting"),
        "sanitized 100 bytes into 220 bytes"
    );
    assert_eq!(benign("bigint-parse"), "parsed a 333-bit integer");
    assert_eq!(benign("bcrypt-cost"), "cost 04: password rejected");
    assert_eq!(benign("argon2-cost"), "m=8,t=8,p=1: password rejected");
    assert_eq!(benign("json-huge"), "parsed an array of 10 elements");
    assert_eq!(benign("gzip-bomb"), "inflated 20 bytes into 0 bytes");
    assert_eq!(
        benign("xml-attributes"),
        "read 1 elements with 10 attributes"
    );
    assert_eq!(benign("yaml-aliases"), "parsed a mapping of 2 keys");
    assert!(benign("tungstenite-header").starts_with("accepted a "));
    assert!(benign("read-path").starts_with("read 4096 bytes from "));
    assert!(benign("infinite-loop").starts_with("spun 1000 iterations"));
    assert!(benign("sort").starts_with("sorted 1000 values"));
    assert_eq!(benign("quicksort-sorted"), "sorted 100 values (0..=99)");
}

#[test]
fn the_regex_matches_when_a_c_follows() {
    assert_eq!(regex::handle(b"ababc").unwrap(), "match: true");
    assert_eq!(regex::handle_defended(b"ababc").unwrap(), "match: true");
}

#[test]
fn the_defended_regex_fails_fast_on_the_attack_input() {
    let v = by_name("fancy-regex-defended").unwrap();
    let body = v.attack_payload();
    let (result, elapsed) = timed(|| (v.handler)(&body));
    let err = result.expect_err("the backtrack limit stops the search");
    assert_eq!(err.vector(), "fancy-regex-defended");
    let source = std::error::Error::source(&err).expect("wraps fancy-regex's error");
    let fancy = source
        .downcast_ref::<fancy_regex::Error>()
        .expect("a fancy_regex::Error");
    assert!(
        matches!(
            fancy,
            fancy_regex::Error::RuntimeError(fancy_regex::RuntimeError::BacktrackLimitExceeded)
        ),
        "{fancy:?}"
    );
    // About 20 ms in release; generous for debug builds.
    assert!(elapsed < GENEROUS, "took {elapsed:?}");
}

#[test]
fn a_real_bcrypt_hash_verifies() {
    let hash = bcrypt::hash_with_salt(bcrypt_cost::PASSWORD, 4, [7; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB);
    assert_eq!(
        bcrypt_cost::handle(hash.as_bytes()).unwrap(),
        "cost 04: password matches"
    );
}

#[test]
fn out_of_range_bcrypt_costs_are_rejected_at_once() {
    for cost in [0, 3, 32, 99, 100] {
        let (result, elapsed) = timed(|| bcrypt_cost::handle(&bcrypt_cost::payload(cost)));
        assert!(result.is_err(), "cost {cost} accepted");
        assert!(
            elapsed < Duration::from_secs(1),
            "cost {cost} took {elapsed:?}"
        );
    }
}

#[test]
fn argon2_rejects_memory_below_its_minimum() {
    let v = by_name("argon2-cost").unwrap();
    assert!(v.run(4).is_err());
}

#[test]
fn gzip_counts_several_mebibytes() {
    assert_eq!(
        gzip::handle(&gzip::payload(2)).unwrap(),
        format!(
            "inflated {} bytes into {} bytes",
            gzip::payload(2).len(),
            2 * gzip::MIB
        )
    );
}

#[test]
fn gzip_rejects_a_corrupt_trailer() {
    let mut body = gzip::payload(1);
    let crc = body.len() - 8;
    body[crc] ^= 0xff;
    assert!(gzip::handle(&body).is_err());
}

#[test]
fn read_reports_a_missing_file() {
    let err = read::handle(b"/nonexistent/curfew-attacks/file").unwrap_err();
    assert_eq!(err.vector(), "read-path");
    assert!(err.to_string().contains("/nonexistent/curfew-attacks/file"));
}

#[test]
fn spin_and_sort_count_what_they_are_asked_to() {
    assert!(spin::handle(b"0").unwrap().starts_with("spun 0 iterations"));
    assert_eq!(
        sort::handle(b"1").unwrap(),
        sort::handle(b"1").unwrap(),
        "deterministic"
    );
    assert!(sort::handle(b"0").unwrap().starts_with("sorted 0 values"));
    assert_eq!(
        sort::handle_quicksort(&sort::sorted_payload(0)).unwrap(),
        "sorted 0 values"
    );
}

#[test]
fn quicksort_sorts_unsorted_input_too() {
    let values: [u64; 6] = [5, 3, 9, 1, 1, 7];
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        sort::handle_quicksort(&body).unwrap(),
        "sorted 6 values (1..=9)"
    );
    assert!(sort::handle_quicksort(&[1, 2, 3]).is_err());
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let garbage: &[u8] = b"\xff\xfe not a payload \x00";
    for v in all() {
        if v.name == "read-path" {
            // A path with a NUL byte is rejected by the OS layer.
            assert!((v.handler)(garbage).is_err());
            continue;
        }
        let (result, elapsed) = timed(|| (v.handler)(garbage));
        assert!(elapsed < GENEROUS, "{} took {elapsed:?}", v.name);
        if let Err(e) = result {
            assert_eq!(e.vector(), v.name, "errors name their vector");
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn an_impossible_sort_count_is_an_error_not_an_abort() {
    let err = sort::handle(&sort::payload(usize::MAX)).unwrap_err();
    assert_eq!(err.vector(), "sort");
}
