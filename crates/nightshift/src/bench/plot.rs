//! PNG plots of a bench summary (plotters, bitmap backend, DejaVu Sans).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::{Row, Summary};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn load_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian: fonts-dejavu-core)"))?;
    // plotters keeps fonts for the life of the process.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))
}

/// One colour per variant, the same in every plot: variants take colours in
/// the order they first appear in the summary (the bench's variant order).
struct Palette(Vec<String>);

impl Palette {
    fn of(summary: &Summary) -> Self {
        let mut seen: Vec<String> = Vec::new();
        for r in &summary.rows {
            if !seen.contains(&r.variant) {
                seen.push(r.variant.clone());
            }
        }
        Palette(seen)
    }

    fn color(&self, variant: &str) -> RGBColor {
        const C: [RGBColor; 12] = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
            RGBColor(188, 189, 34),
            RGBColor(23, 190, 207),
            RGBColor(0, 0, 0),
            RGBColor(255, 187, 120),
        ];
        let i = self.0.iter().position(|v| v == variant).unwrap_or(0);
        C[i % C.len()]
    }
}

fn median(row: &Row, metric: &str) -> Option<f64> {
    row.metrics.get(metric).map(|s| s.median)
}

/// Writes every plot into `dir`; returns their paths.
pub fn all(summary: &Summary, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    load_font()?;
    let palette = Palette::of(summary);
    let mut out = Vec::new();
    for scenario in [
        "mixed",
        "neighbour",
        "neighbour-1x",
        "bursty",
        "saturated",
        "async",
    ] {
        let rows: Vec<&Row> = summary
            .rows
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect();
        if rows.iter().any(|r| median(r, "lat_p50_us").is_some()) {
            let p = dir.join(format!("latency-{scenario}.png"));
            latency(&rows, scenario, &palette, &p)?;
            out.push(p);
        }
    }
    let p = dir.join("interference.png");
    interference(summary, &palette, &p)?;
    out.push(p);
    for scenario in ["mixed", "bursty"] {
        let rows: Vec<&Row> = summary
            .rows
            .iter()
            .filter(|r| r.scenario == scenario && median(r, "pickup_p50_us").is_some())
            .collect();
        if !rows.is_empty() {
            let p = dir.join(format!("pickup-{scenario}.png"));
            pickup(&rows, scenario, &palette, &p)?;
            out.push(p);
        }
    }
    Ok(out)
}

/// Guest-measured latency percentiles per variant: a coarse CDF (p10..p99.9).
fn latency(rows: &[&Row], scenario: &str, palette: &Palette, path: &Path) -> anyhow::Result<()> {
    let points = [
        ("lat_p10_us", 10.0),
        ("lat_p25_us", 25.0),
        ("lat_p50_us", 50.0),
        ("lat_p75_us", 75.0),
        ("lat_p90_us", 90.0),
        ("lat_p99_us", 99.0),
        ("lat_p999_us", 99.9),
    ];
    let caption =
        format!("{scenario}: I/O latency CDF (guest-measured p10..p99.9, medians of runs)");
    cdf(
        rows,
        &points,
        10.0,
        &caption,
        "latency (µs, log scale)",
        palette,
        path,
    )
}

/// Pickup latency per variant (idle policy): from the moment the VMM knew a
/// vCPU halted with work queued to the start of its first item.
fn pickup(rows: &[&Row], scenario: &str, palette: &Palette, path: &Path) -> anyhow::Result<()> {
    let points = [
        ("pickup_p50_us", 50.0),
        ("pickup_p99_us", 99.0),
        ("pickup_p999_us", 99.9),
    ];
    let caption = format!("{scenario}: pickup latency, halt known -> first item (p50, p99, p99.9)");
    cdf(
        rows,
        &points,
        0.1,
        &caption,
        "pickup (µs, log scale)",
        palette,
        path,
    )
}

/// A coarse CDF per row from the percentile metrics in `points`, on a log
/// x axis starting at `floor`.
fn cdf(
    rows: &[&Row],
    points: &[(&str, f64)],
    floor: f64,
    caption: &str,
    x_desc: &str,
    palette: &Palette,
    path: &Path,
) -> anyhow::Result<()> {
    let last = points[points.len() - 1].0;
    let max = rows
        .iter()
        .filter_map(|r| median(r, last))
        .fold(floor * 10.0, f64::max)
        * 1.2;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((floor..max).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("percentile")
        .label_style(("sans-serif", 14))
        .draw()?;
    for r in rows {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|(m, pct)| Some((median(r, m)?.max(floor), *pct)))
            .collect();
        let c = palette.color(&r.variant);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(r.variant.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Interference (busy vCPU's / neighbour's compute rate vs solo) against I/O rate.
fn interference(summary: &Summary, palette: &Palette, path: &Path) -> anyhow::Result<()> {
    let pts: Vec<(&Row, f64, f64)> = summary
        .rows
        .iter()
        .filter(|r| matches!(r.scenario.as_str(), "mixed" | "neighbour" | "neighbour-1x"))
        .filter_map(|r| Some((r, median(r, "iops")?, median(r, "compute_pct")?)))
        .collect();
    let xmax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let ymin = pts.iter().map(|p| p.2).fold(100.0, f64::min).min(90.0) - 2.0;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Interference vs I/O rate (medians): higher and further right is better",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..xmax, ymin..102f64)?;
    chart
        .configure_mesh()
        .x_desc("I/O requests per second (guest)")
        .y_desc("compute rate, % of solo")
        .label_style(("sans-serif", 14))
        .draw()?;
    let variants: Vec<&str> = {
        let mut v: Vec<&str> = pts.iter().map(|p| p.0.variant.as_str()).collect();
        v.dedup();
        v.sort_unstable();
        v.dedup();
        v
    };
    for variant in &variants {
        let c = palette.color(variant);
        let mine: Vec<_> = pts.iter().filter(|p| p.0.variant == *variant).collect();
        chart
            .draw_series(mine.iter().map(|p| {
                let marker = if p.0.scenario == "mixed" { 0 } else { 1 };
                EmptyElement::at((p.1, p.2))
                    + Circle::new((0, 0), 5 + marker * 2, c.filled())
                    + Text::new(
                        format!("{} {}", p.0.scenario, p.0.variant),
                        (8, -6),
                        ("sans-serif", 12),
                    )
            }))?
            .label(variant.to_string())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
