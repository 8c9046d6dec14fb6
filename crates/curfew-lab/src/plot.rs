//! The SVG timeline: benign throughput and p99 latency over time, every mode
//! on one axis, attack windows shaded.
//!
//! The phases of one attack share a stretch of the x axis, so the modes'
//! lines lie on top of each other and can be compared second by second.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

use crate::server::Mode;
use crate::study::{Phase, StudyConfig, buckets};

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Tokio => RGBColor(214, 39, 40),
        Mode::Curfew => RGBColor(31, 119, 180),
        Mode::CurfewPolicy => RGBColor(44, 160, 44),
        Mode::CurfewSupervised => RGBColor(148, 103, 189),
    }
}

const WINDOW: RGBColor = RGBColor(255, 236, 200);
const FONT: &str = "sans-serif";

/// Writes the plot to `path`.
pub fn write_svg(
    path: &Path,
    cfg: &StudyConfig,
    phases: &[Phase],
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let p = cfg.phase_len().as_secs_f64();
    let n = cfg.attacks.len().max(1);
    let x_max = p * n as f64;
    let width = (240.0 * n as f64).clamp(900.0, 2000.0) as u32;
    let root = SVGBackend::new(path, (width, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Benign clients under attack: {} keep-alive connections; poll budget {:?}, job budget {:?}",
        cfg.connections, cfg.server.poll_budget, cfg.server.job_budget
    );
    let root = root.titled(&title, (FONT, 18))?;
    let (upper, lower) = root.split_vertically(370);
    let offset = |i: usize| i as f64 * p;
    let index = |ph: &Phase| {
        cfg.attacks
            .iter()
            .position(|a| a.label == ph.attack.label)
            .unwrap_or(0)
    };
    // One line per attack and mode: its median run.
    let series: Vec<(Mode, usize, Vec<crate::study::Bucket>)> = crate::report::groups(phases)
        .iter()
        .map(|g| crate::report::median_phase(g))
        .map(|ph| (ph.mode, index(ph), buckets(ph, cfg.bucket)))
        .collect();
    let half = cfg.bucket.as_secs_f64() / 2.0;

    // Throughput.
    let y_max = series
        .iter()
        .flat_map(|(_, _, b)| b.iter().map(|b| b.rps))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("seconds (each attack gets its own stretch; all modes share it)")
        .y_desc("benign answers/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, a) in cfg.attacks.iter().enumerate() {
        let x0 = offset(i) + cfg.baseline.as_secs_f64();
        let x1 = x0 + cfg.window.as_secs_f64();
        chart.draw_series([Rectangle::new([(x0, 0.0), (x1, y_max)], WINDOW.filled())])?;
        chart.draw_series([Text::new(
            a.label.clone(),
            (offset(i) + 0.1, y_max * 0.98),
            (FONT, 13),
        )])?;
        if i > 0 {
            chart.draw_series(LineSeries::new(
                [(offset(i), 0.0), (offset(i), y_max)],
                BLACK.mix(0.3),
            ))?;
        }
    }
    let mut labelled = Vec::new();
    for (mode, i, b) in &series {
        let pts: Vec<(f64, f64)> = b
            .iter()
            .map(|b| (offset(*i) + b.start + half, b.rps))
            .collect();
        let c = color(*mode);
        let s = chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))?;
        if !labelled.contains(mode) {
            labelled.push(*mode);
            s.label(mode.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK.mix(0.4))
        .background_style(WHITE.mix(0.9))
        .label_font((FONT, 13))
        .draw()?;

    // Latency: log scale; the waits of requests still in flight count, so a
    // stall rises toward the benign timeout instead of leaving a gap.
    let timeout_ms = cfg.benign_timeout.as_secs_f64() * 1e3;
    let (lo, hi) = (0.1f64, timeout_ms * 2.0);
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("seconds")
        .y_desc("benign p99 wait, ms (log)")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for i in 0..cfg.attacks.len() {
        let x0 = offset(i) + cfg.baseline.as_secs_f64();
        let x1 = x0 + cfg.window.as_secs_f64();
        chart.draw_series([Rectangle::new([(x0, lo), (x1, hi)], WINDOW.filled())])?;
        if i > 0 {
            chart.draw_series(LineSeries::new(
                [(offset(i), lo), (offset(i), hi)],
                BLACK.mix(0.3),
            ))?;
        }
    }
    chart.draw_series(LineSeries::new(
        [(0.0, timeout_ms), (x_max, timeout_ms)],
        BLACK.mix(0.5),
    ))?;
    chart.draw_series([Text::new(
        "benign timeout",
        (0.1, timeout_ms * 1.15),
        (FONT, 12),
    )])?;
    for (mode, i, b) in &series {
        let c = color(*mode);
        // Split the line where a bucket saw no request at all.
        let mut run: Vec<(f64, f64)> = Vec::new();
        for b in b {
            match b.p99_ms {
                Some(v) => run.push((offset(*i) + b.start + half, v.clamp(lo, hi))),
                None if !run.is_empty() => {
                    chart.draw_series(
                        LineSeries::new(std::mem::take(&mut run), c.stroke_width(2)).point_size(1),
                    )?;
                }
                None => {}
            }
        }
        if !run.is_empty() {
            chart.draw_series(LineSeries::new(run, c.stroke_width(2)).point_size(1))?;
        }
    }
    root.present()?;
    Ok(())
}
