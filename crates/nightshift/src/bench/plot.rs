//! PNG plots of a bench summary (plotters, bitmap backend, DejaVu Sans).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use super::report::{Row, Summary};
use super::scenario::Variant;

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

/// One colour per variant, the same in every plot of every run: variants take
/// colours in the bench's default variant order ([`Variant::defaults`]), then any
/// others in the order they first appear in the summary. So a run of some
/// scenarios or variants only (the network set) colours `qemu` as the full run does.
struct Palette(Vec<String>);

impl Palette {
    fn of(summary: &Summary) -> Self {
        let mut seen: Vec<String> = Variant::defaults(true).iter().map(|v| v.label()).collect();
        for r in &summary.rows {
            if !seen.contains(&r.variant) {
                seen.push(r.variant.clone());
            }
        }
        Palette(seen)
    }

    fn color(&self, variant: &str) -> RGBColor {
        const C: [RGBColor; 16] = [
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
            RGBColor(0, 0, 128),
            RGBColor(152, 223, 138),
            RGBColor(128, 0, 0),
            RGBColor(255, 215, 0),
        ];
        C[self.index(variant) % C.len()]
    }

    fn index(&self, variant: &str) -> usize {
        self.0.iter().position(|v| v == variant).unwrap_or(0)
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
    let interfering = summary.rows.iter().any(|r| {
        matches!(r.scenario.as_str(), "mixed" | "neighbour" | "neighbour-1x")
            && median(r, "iops").is_some()
    });
    if interfering {
        let p = dir.join("interference.png");
        interference(summary, &palette, &p)?;
        out.push(p);
    }
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
    out.extend(net(summary, &palette, dir)?);
    Ok(out)
}

/// The network plots: round-trip CDFs, throughput bars, compute %solo bars.
fn net(summary: &Summary, palette: &Palette, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let of = |scenario: &str, metric: &str| -> Vec<&Row> {
        summary
            .rows
            .iter()
            .filter(|r| r.scenario == scenario && median(r, metric).is_some())
            .collect()
    };
    for scenario in ["net-rr", "net-rr+compute"] {
        let rows = of(scenario, "rtt_p50_us");
        if rows.is_empty() {
            continue;
        }
        let points = [
            ("rtt_p10_us", 10.0),
            ("rtt_p25_us", 25.0),
            ("rtt_p50_us", 50.0),
            ("rtt_p75_us", 75.0),
            ("rtt_p90_us", 90.0),
            ("rtt_p99_us", 99.0),
            ("rtt_p999_us", 99.9),
        ];
        let caption =
            format!("{scenario}: UDP round-trip CDF (host-measured p10..p99.9, medians of runs)");
        let p = dir.join(format!("latency-{}.png", scenario.replace('+', "-")));
        cdf(
            &rows,
            &points,
            10.0,
            &caption,
            "round trip (µs, log scale)",
            palette,
            &p,
        )?;
        out.push(p);
    }
    let streams = ["net-stream", "net-stream+compute"];
    if streams.iter().any(|s| !of(s, "to_guest_mbit_s").is_empty()) {
        let p = dir.join("net-throughput.png");
        {
            let root = BitMapBackend::new(&p, (1400, 560)).into_drawing_area();
            root.fill(&WHITE)?;
            let (left, right) = root.split_horizontally(700);
            for (area, metric, caption) in [
                (
                    &left,
                    "to_guest_mbit_s",
                    "TCP host -> guest (medians, min-max)",
                ),
                (
                    &right,
                    "from_guest_mbit_s",
                    "TCP guest -> host (medians, min-max)",
                ),
            ] {
                let groups: Vec<(&str, Vec<&Row>)> =
                    streams.iter().map(|s| (*s, of(s, metric))).collect();
                bars(area, caption, "Mbit/s", &groups, metric, palette)?;
            }
            root.present()?;
        }
        out.push(p);
    }
    let computing = ["net-rr+compute", "net-stream+compute"];
    let groups: Vec<(&str, Vec<&Row>)> = computing
        .iter()
        .map(|s| (*s, of(s, "compute_pct")))
        .collect();
    if groups.iter().any(|g| !g.1.is_empty()) {
        let p = dir.join("net-compute.png");
        {
            let root = BitMapBackend::new(&p, (900, 560)).into_drawing_area();
            root.fill(&WHITE)?;
            bars(
                &root,
                "Computing vCPU beside the traffic: loop rate, % of solo (medians, min-max)",
                "compute rate, % of solo",
                &groups,
                "compute_pct",
                palette,
            )?;
            root.present()?;
        }
        out.push(p);
    }
    Ok(out)
}

/// Grouped bars: one group per scenario, one bar per variant in its palette colour
/// (the median), with a min-max whisker.
fn bars(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    y_desc: &str,
    groups: &[(&str, Vec<&Row>)],
    metric: &str,
    palette: &Palette,
) -> anyhow::Result<()> {
    // Variants in palette order, so bars sit in the same place in every group.
    let mut variants: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|r| r.variant.as_str()))
        .collect();
    variants.sort_by_key(|v| palette.index(v));
    variants.dedup();
    let spread = |r: &Row| r.metrics.get(metric).copied();
    let ymax = groups
        .iter()
        .flat_map(|g| g.1.iter().filter_map(|r| spread(r)))
        .map(|s| s.max)
        .fold(1.0, f64::max)
        * 1.45;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    let width = 0.8 / variants.len().max(1) as f64;
    for (i, variant) in variants.iter().enumerate() {
        let c = palette.color(variant);
        let mine: Vec<(f64, super::report::Spread)> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, rows))| {
                let r = rows.iter().find(|r| r.variant == *variant)?;
                Some((g as f64 + 0.1 + i as f64 * width, spread(r)?))
            })
            .collect();
        chart
            .draw_series(mine.iter().map(|(x, s)| {
                Rectangle::new([(*x, 0.0), (x + width * 0.9, s.median)], c.filled())
            }))?
            .label(variant.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        chart.draw_series(mine.iter().map(|(x, s)| {
            let xc = x + width * 0.45;
            PathElement::new(vec![(xc, s.min), (xc, s.max)], BLACK.stroke_width(2))
        }))?;
    }
    // Group names under the axis, in the area's own pixels.
    let label =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    let base = area.get_base_pixel();
    for (g, (name, _)) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        area.draw(&Text::new(
            name.to_string(),
            (x - base.0, y - base.1 + 6),
            label.clone(),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_variant_has_a_colour_of_its_own() {
        let palette = Palette::of(&Summary { rows: Vec::new() });
        let colours: Vec<(u8, u8, u8)> = Variant::defaults(true)
            .iter()
            .map(|v| {
                let c = palette.color(&v.label());
                (c.0, c.1, c.2)
            })
            .collect();
        for (i, a) in colours.iter().enumerate() {
            assert!(
                !colours[i + 1..].contains(a),
                "two variants share {a:?}: {colours:?}"
            );
        }
    }
}
