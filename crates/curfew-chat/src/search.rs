//! The history search, with a backtracking regex engine.
//!
//! It uses fancy-regex 0.14 (the version the attack corpus pins) with its
//! backtrack limit lifted, as an application does when the default limit
//! rejects legitimate searches. That is what real chat search features
//! look like, and it is poisonable: `(a|b|ab)*(?=c)` against a message of
//! `abab…` tries 2^n ways to split it before failing. The defence is not in
//! this module: the search runs on curfew's worker pool under the search
//! budget ([`exec`](crate::exec)), which answers the client `timeout` while
//! the search is still running, and by default in a worker process of its
//! own ([`isolate`](crate::isolate)), which is then killed.

use std::sync::Arc;

use fancy_regex::RegexBuilder;

use crate::protocol::{SearchMatch, escape};
use crate::rooms::Entry;

/// The most matches returned.
pub const MAX_MATCHES: usize = 20;

/// Messages in `history` (oldest first) whose text matches `pattern`, newest
/// first. `None` if the pattern does not compile.
pub fn search(history: &[Arc<Entry>], pattern: &str) -> Option<Vec<SearchMatch>> {
    let re = RegexBuilder::new(pattern)
        .backtrack_limit(usize::MAX)
        .build()
        .ok()?;
    let mut matches = Vec::new();
    for entry in history.iter().rev() {
        // An engine error (none is expected with the limit lifted) counts
        // as no match.
        if re.is_match(&entry.text).unwrap_or(false) {
            matches.push(SearchMatch {
                id: entry.id,
                from: entry.from.to_string(),
                text: escape(&entry.text),
            });
            if matches.len() == MAX_MATCHES {
                break;
            }
        }
    }
    Some(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, text: &str) -> Arc<Entry> {
        Arc::new(Entry {
            id,
            from: "alice".into(),
            text: text.into(),
        })
    }

    #[test]
    fn finds_newest_first_and_escapes() {
        let h = vec![
            entry(1, "hello <b>"),
            entry(2, "bye"),
            entry(3, "hello again"),
        ];
        let m = search(&h, "hel+o").unwrap();
        assert_eq!(m.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 1]);
        assert_eq!(m[1].text, "hello &lt;b&gt;");
        assert!(search(&h, "(unclosed").is_none());
    }

    #[test]
    fn the_poisonous_pattern_backtracks() {
        // Small n: each added pair roughly doubles the time; the attack uses
        // 30 or more.
        let h = vec![entry(1, &"ab".repeat(12))];
        assert_eq!(search(&h, r"(a|b|ab)*(?=c)").unwrap().len(), 0);
    }
}
