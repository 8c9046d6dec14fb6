//! Payload generators produce what they claim. No test here runs a handler on
//! an attack-sized payload.

use std::io::Read as _;
use std::os::unix::fs::FileTypeExt as _;

use curfew_attacks::{
    argon2_cost, bcrypt_cost, bigint, gzip, json, markup, read, regex, sort, spin, websocket, xml,
    yaml,
};

#[test]
fn regex_payload_is_ab_pairs() {
    assert_eq!(regex::payload(0), b"");
    assert_eq!(regex::payload(3), b"ababab");
    assert_eq!(regex::payload(22).len(), 44);
}

#[test]
fn markup_payload_is_unclosed_divs() {
    assert_eq!(markup::payload(2), b"<div><div>");
    assert_eq!(markup::payload(1000).len(), 5000);
}

#[test]
fn bigint_payload_has_n_digits_and_no_leading_zero() {
    assert!(bigint::payload(0).is_empty());
    for n in [1, 2, 50, 1000] {
        let p = bigint::payload(n);
        assert_eq!(p.len(), n);
        assert!(p.iter().all(u8::is_ascii_digit));
        assert_ne!(p[0], b'0');
    }
    // Deterministic, so measurements are reproducible.
    assert_eq!(bigint::payload(64), bigint::payload(64));
    let parsed: num_bigint::BigUint = std::str::from_utf8(&bigint::payload(30))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(parsed.to_string().len(), 30);
}

#[test]
fn bcrypt_payload_is_a_60_byte_hash_with_the_requested_cost() {
    for cost in [4, 12, 15, 31] {
        let p = String::from_utf8(bcrypt_cost::payload(cost)).unwrap();
        assert_eq!(p.len(), 60, "{p}");
        assert!(p.starts_with(&format!("$2b${cost:02}$")), "{p}");
    }
}

#[test]
fn argon2_payload_is_a_phc_string_with_the_requested_memory() {
    use argon2::password_hash::PasswordHash;
    let p = String::from_utf8(argon2_cost::payload(196_608)).unwrap();
    let hash = PasswordHash::new(&p).unwrap();
    assert_eq!(hash.algorithm.as_str(), "argon2id");
    assert_eq!(hash.params.get_decimal("m"), Some(196_608));
    assert_eq!(hash.params.get_decimal("t"), Some(argon2_cost::T_COST));
    assert_eq!(hash.params.get_decimal("p"), Some(1));
    assert_eq!(hash.hash.unwrap().len(), 32);
}

#[test]
fn json_payload_is_an_array_of_n_objects() {
    assert_eq!(json::payload(0), b"[]");
    let value: serde_json::Value = serde_json::from_slice(&json::payload(25)).unwrap();
    let items = value.as_array().unwrap();
    assert_eq!(items.len(), 25);
    assert_eq!(items[7]["id"], 7);
    assert_eq!(items[7]["name"], "user-7");
    // About 64 bytes an element, as the catalogue says.
    let per_element = json::payload(10_000).len() / 10_000;
    assert!((50..80).contains(&per_element), "{per_element}");
}

fn inflate(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

#[test]
fn gzip_payload_inflates_to_n_mib_of_zeros() {
    for n in [0, 1, 3] {
        let body = gzip::payload(n);
        assert_eq!(&body[..3], &[0x1f, 0x8b, 8], "gzip magic and deflate");
        let out = inflate(&body);
        assert_eq!(out.len(), n * gzip::MIB);
        assert!(out.iter().all(|&b| b == 0));
    }
}

#[test]
fn gzip_payload_is_about_a_thousandth_of_its_output() {
    let n = 64;
    let body = gzip::payload(n);
    let ratio = (n * gzip::MIB) / body.len();
    assert!(ratio > 900, "amplification only {ratio}x");
    // Linear in n: each MiB adds the same block.
    assert_eq!(
        gzip::payload(2 * n).len() - body.len(),
        body.len() - gzip::payload(0).len()
    );
}

#[test]
fn xml_payload_has_n_distinct_attributes() {
    assert_eq!(xml::payload(0), b"<a></a>");
    assert_eq!(xml::payload(2), br#"<a a0="" a1=""></a>"#);
    let doc = xml::payload(500);
    let mut reader = quick_xml::Reader::from_reader(&doc[..]);
    match reader.read_event().unwrap() {
        quick_xml::events::Event::Start(tag) => {
            let names: Vec<Vec<u8>> = tag
                .attributes()
                .map(|a| a.unwrap().key.as_ref().to_vec())
                .collect();
            assert_eq!(names.len(), 500);
            assert_eq!(names[499], b"a499");
        }
        other => panic!("expected a start tag, got {other:?}"),
    }
}

fn leaves(value: &serde_yaml::Value) -> usize {
    match value {
        serde_yaml::Value::Sequence(items) => items.iter().map(leaves).sum(),
        _ => 1,
    }
}

#[test]
fn yaml_payload_parses_and_expands_nine_fold_per_level() {
    let text = String::from_utf8(yaml::payload(2)).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("a0: &a0 ~"),
        "the base anchor comes first"
    );
    assert_eq!(text.lines().count(), 3);
    for levels in 0..=3 {
        let value: serde_yaml::Value = serde_yaml::from_slice(&yaml::payload(levels)).unwrap();
        let map = value.as_mapping().unwrap();
        assert_eq!(map.len(), levels + 1);
        let top = &value[format!("a{levels}").as_str()];
        assert_eq!(leaves(top), 9usize.pow(levels as u32));
    }
}

#[test]
fn yaml_payload_stays_tiny() {
    // The attack is in the expansion, not the size: 7 levels is a few hundred bytes.
    assert!(yaml::payload(7).len() < 512);
}

#[test]
fn websocket_payload_is_an_upgrade_request_with_an_n_byte_header() {
    let p = websocket::payload(1000);
    assert!(p.starts_with(b"GET /chat HTTP/1.1\r\n"));
    assert!(p.ends_with(b"\r\n\r\n"));
    let text = String::from_utf8(p.clone()).unwrap();
    let padding = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Padding: "))
        .unwrap();
    assert_eq!(padding.len(), 1000);
    assert_eq!(p.len() - websocket::payload(0).len(), 1000);
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn read_payload_names_a_regular_file_of_n_bytes() {
    for n in [0, 10, 4096] {
        let path = String::from_utf8(read::payload(n)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.is_file(), "{path}");
        assert_eq!(meta.len(), n as u64, "{path}");
        // Asking again reuses the same file.
        assert_eq!(read::payload(n), path.as_bytes());
    }
}

#[test]
fn make_fifo_creates_a_fifo_without_opening_it() {
    let dir = std::env::temp_dir().join(format!("curfew-attacks-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = read::make_fifo(&dir).unwrap();
    let b = read::make_fifo(&dir).unwrap();
    assert_ne!(a, b, "each call makes a new FIFO");
    for path in [&a, &b] {
        // symlink_metadata stats the path without opening it, so this cannot block.
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(meta.file_type().is_fifo(), "{}", path.display());
        assert!(path.starts_with(&dir));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn make_fifo_reports_a_missing_directory() {
    let missing = std::env::temp_dir().join("curfew-attacks-no-such-dir/deeper");
    assert!(read::make_fifo(&missing).is_err());
}

#[test]
fn dev_zero_is_the_unbounded_path() {
    assert_eq!(read::DEV_ZERO, "/dev/zero");
}

#[test]
fn count_payloads_are_decimal() {
    assert_eq!(spin::payload(1000), b"1000");
    assert_eq!(spin::payload(usize::MAX), usize::MAX.to_string().as_bytes());
    assert_eq!(sort::payload(20_000_000), b"20000000");
}

#[test]
fn sorted_payload_is_ascending_little_endian_u64s() {
    let p = sort::sorted_payload(5);
    assert_eq!(p.len(), 40);
    let values: Vec<u64> = p
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, [0, 1, 2, 3, 4]);
}
