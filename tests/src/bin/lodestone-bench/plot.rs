//! The benchmark's picture: throughput and p99 latency of every row, etcd and Lodestone
//! side by side, as a PNG.

use std::path::Path;

use plotters::prelude::*;

use super::Figures;

/// The font the labels are drawn with (Debian's fonts-dejavu-core; `scripts/setup.sh`
/// installs it).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const ETCD: RGBColor = RGBColor(90, 120, 170);
const LODESTONE: RGBColor = RGBColor(230, 140, 40);

type Error = Box<dyn std::error::Error>;

/// Draws `rows` (label, etcd, Lodestone) of clusters of `members` into `path`.
pub fn draw(path: &Path, members: usize, rows: &[(String, Figures, Figures)]) -> Result<(), Error> {
    let font = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| format!("{FONT} is not a font plotters can read"))?;
    let root = BitMapBackend::new(path, (1600, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!("etcd 3.4 (blue) and Lodestone (orange), {members} member(s) each on this host");
    let root = root.titled(&title, ("sans-serif", 24))?;
    let (left, right) = root.split_horizontally(800);
    let labels: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let throughput: Vec<(f64, f64)> = rows.iter().map(|r| (r.1.ops_per_sec, r.2.ops_per_sec)).collect();
    let p99: Vec<(f64, f64)> = rows.iter().map(|r| (r.1.p99_ms, r.2.p99_ms)).collect();
    panel(&left, "throughput, op/s (higher is better)", &labels, &throughput)?;
    panel(&right, "p99 latency, ms (lower is better)", &labels, &p99)?;
    root.present()?;
    Ok(())
}

/// One bar chart on a log scale: a pair of bars per row.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[&str],
    values: &[(f64, f64)],
) -> Result<(), Error>
where
    DB::ErrorType: 'static,
{
    let finite = || {
        values
            .iter()
            .flat_map(|&(a, b)| [a, b])
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let high = finite().fold(1.0, f64::max) * 2.0;
    let low = finite().fold(high, f64::min) / 2.0;
    let n = labels.len() as i32;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(80)
        .build_cartesian_2d((0..n - 1).into_segmented(), (low..high).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_style(("sans-serif", 13))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).map_or(String::new(), |s| s.to_string()),
            _ => String::new(),
        })
        .y_label_style(("sans-serif", 14))
        .y_label_formatter(&|v| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()?;
    for (i, &(etcd, lodestone)) in values.iter().enumerate() {
        let at = |v: f64| if v.is_finite() && v > 0.0 { v } else { low };
        let x0 = SegmentValue::Exact(i as i32);
        let x1 = SegmentValue::Exact(i as i32 + 1);
        // Each segment holds two bars: etcd on the left half, Lodestone on the right.
        let mut left = Rectangle::new([(x0.clone(), low), (x1.clone(), at(etcd))], ETCD.filled());
        left.set_margin(0, 0, 8, 46);
        let mut right = Rectangle::new([(x0, low), (x1, at(lodestone))], LODESTONE.filled());
        right.set_margin(0, 0, 46, 8);
        chart.draw_series([left, right])?;
    }
    Ok(())
}
