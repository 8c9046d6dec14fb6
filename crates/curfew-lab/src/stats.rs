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

/// One request and the requests it stands for, corrected for coordinated
/// omission, as `(sent, latency)` pairs.
///
/// A closed-loop client that waits `latency` for one answer does not send
/// the requests it would otherwise have sent meanwhile, one every
/// `interval` (its usual latency), so plain statistics over-represent the
/// fast answers of the good times. As HdrHistogram's
/// `recordValueWithExpectedInterval` does, a latency `L` above twice the
/// interval also stands for requests sent `k·interval` later with latency
/// `L - k·interval`, down to the interval (at most 100,000 of them).
pub fn with_missed(sent: f64, latency: f64, interval: f64) -> impl Iterator<Item = (f64, f64)> {
    const MAX_FILL: usize = 100_000;
    let fill = if interval > 0.0 && latency > 2.0 * interval {
        ((latency / interval) as usize - 1).min(MAX_FILL)
    } else {
        0
    };
    (0..=fill).map(move |k| {
        let shift = k as f64 * interval;
        (sent + shift, latency - shift)
    })
}

/// The latencies of [`with_missed`] for every sample, sorted.
pub fn corrected(latencies: &[f64], interval: f64) -> Vec<f64> {
    let mut v: Vec<f64> = latencies
        .iter()
        .flat_map(|&l| with_missed(0.0, l, interval).map(|(_, l)| l))
        .collect();
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
        // 199 fast answers and one stall of 100 intervals: the stall stands
        // for 100 requests, so the corrected p99 is far above the interval.
        let mut v = vec![1.0; 199];
        v.push(100.0);
        assert_eq!(percentile(&v, 0.99), Some(1.0));
        let c = corrected(&v, 1.0);
        assert_eq!(c.len(), 199 + 100);
        assert!(percentile(&c, 0.99).unwrap() > 90.0);
        assert_eq!(corrected(&[1.0, 1.5], 1.0), vec![1.0, 1.5]);
        let missed: Vec<_> = with_missed(10.0, 3.0, 1.0).collect();
        assert_eq!(missed, vec![(10.0, 3.0), (11.0, 2.0), (12.0, 1.0)]);
        assert_eq!(with_missed(0.0, 5.0, 0.0).count(), 1);
    }

    #[test]
    fn tallies() {
        let t = tally(["b", "a", "b"].map(String::from));
        assert_eq!(t, "b ×2, a ×1");
        assert_eq!(tally(Vec::new()), "-");
    }
}
