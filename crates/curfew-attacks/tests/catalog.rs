//! The catalogue itself: names, metadata and lookup.

use std::collections::HashSet;
use std::error::Error as _;

use curfew_attacks::{AttackClass, AttackError, CostKind, all, by_name};

#[test]
fn names_are_unique_url_safe_slugs() {
    let mut seen = HashSet::new();
    for v in all() {
        assert!(!v.name.is_empty());
        assert!(
            v.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{} is not a slug",
            v.name
        );
        assert!(!v.name.starts_with('-') && !v.name.ends_with('-'));
        assert!(seen.insert(v.name), "{} appears twice", v.name);
    }
}

#[test]
fn by_name_finds_every_vector_and_nothing_else() {
    for v in all() {
        let found = by_name(v.name).expect("listed vectors are found");
        assert!(std::ptr::eq(found, v));
    }
    assert!(by_name("no-such-vector").is_none());
    assert!(by_name("").is_none());
}

#[test]
fn the_required_vectors_are_present() {
    for name in [
        "fancy-regex",
        "fancy-regex-defended",
        "ammonia-nesting",
        "bigint-parse",
        "bcrypt-cost",
        "argon2-cost",
        "json-huge",
        "gzip-bomb",
        "xml-attributes",
        "yaml-aliases",
        "read-path",
        "infinite-loop",
        "sort",
    ] {
        assert!(by_name(name).is_some(), "missing {name}");
    }
}

#[test]
fn every_class_is_covered() {
    for class in [
        AttackClass::ReDoS,
        AttackClass::ReadDoS,
        AttackClass::CpuDoS,
        AttackClass::HashCost,
        AttackClass::DecompressionBomb,
        AttackClass::InfiniteLoop,
    ] {
        assert!(all().iter().any(|v| v.class == class), "no {class} vector");
    }
}

#[test]
fn metadata_is_filled_in_and_sizes_are_ordered() {
    for v in all() {
        assert!(!v.vulnerable.is_empty(), "{}", v.name);
        assert!(!v.growth.is_empty(), "{}", v.name);
        assert!(v.benign_size < v.attack_size, "{}", v.name);
    }
}

#[test]
fn read_dos_is_blocking_io_and_the_rest_is_cpu() {
    for v in all() {
        let expected = if v.class == AttackClass::ReadDoS {
            CostKind::BlockingIo
        } else {
            CostKind::Cpu
        };
        assert_eq!(v.kind, expected, "{}", v.name);
    }
}

#[test]
fn the_infinite_loop_attack_is_unbounded() {
    assert_eq!(by_name("infinite-loop").unwrap().attack_size, usize::MAX);
}

#[test]
fn class_and_kind_display_their_names() {
    assert_eq!(AttackClass::ReDoS.to_string(), "ReDoS");
    assert_eq!(AttackClass::DecompressionBomb.as_str(), "DecompressionBomb");
    assert_eq!(CostKind::BlockingIo.to_string(), "BlockingIo");
}

#[test]
fn attack_error_displays_vector_message_and_source() {
    let plain = AttackError::new("sort", "count does not fit");
    assert_eq!(plain.to_string(), "sort: count does not fit");
    assert_eq!(plain.vector(), "sort");
    assert_eq!(plain.message(), "count does not fit");
    assert!(plain.source().is_none());

    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
    let wrapped = AttackError::with_source("read-path", "cannot read /x", io);
    assert_eq!(wrapped.to_string(), "read-path: cannot read /x: gone");
    assert_eq!(wrapped.source().unwrap().to_string(), "gone");

    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<AttackError>();
}

#[test]
fn class_and_kind_honour_width() {
    assert_eq!(format!("{:7}|", AttackClass::ReDoS), "ReDoS  |");
    assert_eq!(format!("{:>4}", CostKind::Cpu), " Cpu");
}
