//! The SVG chart: one panel per comparison group (see [`crate::summary`]),
//! one group of bars per case, one bar per target, on a logarithmic axis so
//! that a 10x gap and a 1.1x gap both stay readable.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Report;
use crate::summary::{Group, Headline, TARGETS, groups};

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 380;

fn color(target: &str) -> RGBColor {
    match target {
        "sockeye" => RGBColor(31, 119, 180),
        "baseline" => RGBColor(140, 140, 140),
        _ => RGBColor(44, 160, 44),
    }
}

/// Draws the chart of `reports` to `path`.
pub(crate) fn draw(reports: &[Report], path: &Path) -> anyhow::Result<()> {
    let panels: Vec<Group<'_>> = groups(reports)
        .into_iter()
        .filter(|group| {
            group
                .cases
                .iter()
                .any(|(_, runs)| runs.values().any(|r| group.headline.value(r).is_some()))
        })
        .collect();
    if panels.is_empty() {
        anyhow::bail!("nothing to chart");
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let height = PANEL_HEIGHT * panels.len() as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, group) in areas.iter().zip(&panels) {
        draw_panel(&root, area, group)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {err:?}")
}

fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    group: &Group<'_>,
) -> anyhow::Result<()> {
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|target| {
            group
                .cases
                .iter()
                .any(|(_, runs)| runs.contains_key(*target))
        })
        .collect();
    let values: Vec<f64> = group
        .cases
        .iter()
        .flat_map(|(_, runs)| runs.values())
        .filter_map(|report| group.headline.value(report))
        .filter(|value| *value > 0.0)
        .collect();
    let max = values.iter().copied().fold(f64::MIN, f64::max).max(1.0);
    let min = values.iter().copied().fold(f64::MAX, f64::min).min(max);
    let floor = (min / 3.0).max(1e-6);
    let better = match group.headline {
        Headline::Rate => "higher is better",
        _ => "lower is better",
    };
    let unit = group
        .cases
        .iter()
        .flat_map(|(_, runs)| runs.values())
        .next()
        .map(|report| group.headline.name(report))
        .unwrap_or_default();
    let cases = group.cases.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} — {unit}, {better}", group.title),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..cases, (floor..max * 3.0).log_scale())
        .map_err(plot_error)?;
    let headline = group.headline;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(10)
        .y_label_formatter(&|value| headline.format(*value))
        .draw()
        .map_err(plot_error)?;
    let slot = 0.8 / targets.len().max(1) as f64;
    for (index, target) in targets.iter().enumerate() {
        let fill = color(target);
        let bars: Vec<Rectangle<(f64, f64)>> = group
            .cases
            .iter()
            .enumerate()
            .filter_map(|(case, (_, runs))| {
                let value = runs.get(*target).and_then(|r| headline.value(r))?;
                let x0 = case as f64 + 0.1 + index as f64 * slot;
                Some(Rectangle::new(
                    [(x0, floor), (x0 + slot * 0.9, value.max(floor))],
                    fill.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(plot_error)?
            .label(*target)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], fill.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(plot_error)?;
    // Each bar's value above it, in the root's pixel coordinates.
    let value_style = TextStyle::from(("sans-serif", 10).into_font())
        .pos(Pos::new(HPos::Center, VPos::Bottom))
        .color(&BLACK);
    for (index, target) in targets.iter().enumerate() {
        for (case, (_, runs)) in group.cases.iter().enumerate() {
            let Some(value) = runs.get(*target).and_then(|r| headline.value(r)) else {
                continue;
            };
            let x = case as f64 + 0.1 + (index as f64 + 0.45) * slot;
            let (px, py) = chart.backend_coord(&(x, value.max(floor)));
            root.draw(&Text::new(
                headline.format(value),
                (px, py - 2),
                value_style.clone(),
            ))
            .map_err(plot_error)?;
        }
    }
    // Case labels under each group of bars, in the root's pixel coordinates.
    let label_style = TextStyle::from(("sans-serif", 11).into_font())
        .pos(Pos::new(HPos::Center, VPos::Top))
        .color(&BLACK);
    for (case, (label, _)) in group.cases.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(case as f64 + 0.5, floor));
        root.draw(&Text::new(short(label), (x, y + 6), label_style.clone()))
            .map_err(plot_error)?;
    }
    Ok(())
}

/// Shortens a case label to fit under its bars.
fn short(label: &str) -> String {
    label
        .replace(", max rate", "")
        .replace(" deliveries/s", "/s")
        .replace(" connections", " conns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_shortened() {
        assert_eq!(short("1->1000 x 100 B, max rate"), "1->1000 x 100 B");
        assert_eq!(
            short("1->100 x 1 KiB, 100.0k deliveries/s"),
            "1->100 x 1 KiB, 100.0k/s"
        );
    }
}
