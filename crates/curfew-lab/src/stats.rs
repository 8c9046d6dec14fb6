//! Small statistics helpers.

use std::collections::BTreeMap;

/// The `q` quantile (nearest rank) of sorted values; `None` if empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latencies corrected for coordinated omission, sorted.
///
/// A closed-loop client that waits `L` for one answer does not send the
/// requests it would otherwise have sent meanwhile, one every `interval`
/// (its usual latency), so a plain percentile over-represents the fast
/// answers of the good times. As HdrHistogram's
/// `recordValueWithExpectedInterval` does, each latency `L` above the
/// interval also stands for the requests `L - interval`, `L - 2·interval`,
/// and so on down to the interval (at most `MAX_FILL` of them per sample).
pub fn corrected(latencies: &[f64], interval: f64) -> Vec<f64> {
    const MAX_FILL: usize = 100_000;
    let mut v = Vec::with_capacity(latencies.len());
    for &l in latencies {
        v.push(l);
        if interval > 0.0 && l > 2.0 * interval {
            let mut missed = l - interval;
            let mut n = 0;
            while missed >= interval && n < MAX_FILL {
                v.push(missed);
                missed -= interval;
                n += 1;
            }
        }
    }
    v.sort_by(f64::total_cmp);
    v
}

/// Counts equal items: `"503 timeout ×3, no answer ×2"`, most frequent
/// first; `"-"` if there are none.
pub fn tally(items: impl IntoIterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in items {
        *counts.entry(i).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".to_owned();
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.01), Some(7.0));
    }

    #[test]
    fn correction_fills_in_missed_requests() {
        // 98 fast answers and one stall of 100 intervals: the stall stands
        // for 99 requests, so the corrected p99 is far above the interval.
        let mut v = vec![1.0; 98];
        v.push(100.0);
        assert_eq!(percentile(&v, 0.99), Some(1.0));
        let c = corrected(&v, 1.0);
        assert_eq!(c.len(), 98 + 1 + 99);
        assert!(percentile(&c, 0.99).unwrap() > 90.0);
        assert_eq!(corrected(&[1.0, 1.5], 1.0), vec![1.0, 1.5]);
    }

    #[test]
    fn tallies() {
        let t = tally(["b", "a", "b"].map(String::from));
        assert_eq!(t, "b ×2, a ×1");
        assert_eq!(tally(Vec::new()), "-");
    }
}
