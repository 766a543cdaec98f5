//! The SVG chart: one panel per comparison group (see [`crate::summary`]),
//! one group of bars per case, one bar per target (or build of a target):
//! the median over the repetitions, with a whisker from the lowest to the
//! highest run. The axis is logarithmic so that a 10x gap and a 1.1x gap
//! both stay readable.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Report;
use crate::summary::{Column, Group, Headline, Spread, groups};

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 380;

/// Sockeye's builds in blues (the first the darkest), the baseline grey,
/// nats-server green.
fn color(column: &Column, ours_index: usize) -> RGBColor {
    match column.target.as_str() {
        "sockeye" => [
            RGBColor(31, 119, 180),
            RGBColor(120, 175, 220),
            RGBColor(20, 60, 110),
        ][ours_index % 3],
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
                .any(|case| case.reports().any(|r| group.headline.value(r).is_some()))
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
    let headline = group.headline;
    // Per column, per case: the spread of the runs.
    let spreads: Vec<Vec<Option<Spread>>> = group
        .columns
        .iter()
        .map(|column| {
            group
                .cases
                .iter()
                .map(|case| Spread::of(&case.values(headline, column)))
                .collect()
        })
        .collect();
    let values: Vec<f64> = spreads
        .iter()
        .flatten()
        .flatten()
        .flat_map(|spread| [spread.min, spread.max])
        .filter(|value| *value > 0.0)
        .collect();
    let max = values.iter().copied().fold(f64::MIN, f64::max).max(1.0);
    let min = values.iter().copied().fold(f64::MAX, f64::min).min(max);
    let floor = (min / 3.0).max(1e-6);
    let better = match headline {
        Headline::Rate => "higher is better",
        _ => "lower is better",
    };
    let unit = group
        .cases
        .iter()
        .flat_map(|case| case.reports())
        .next()
        .map(|report| headline.name(report))
        .unwrap_or_default();
    let cases = group.cases.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} — {unit}, median of runs, {better}", group.title),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..cases, (floor..max * 3.0).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(10)
        .y_label_formatter(&|value| headline.format(*value))
        .draw()
        .map_err(plot_error)?;
    let slot = 0.8 / group.columns.len().max(1) as f64;
    let mut ours_index = 0;
    for (index, column) in group.columns.iter().enumerate() {
        let fill = color(column, ours_index);
        if column.is_ours() {
            ours_index += 1;
        }
        let bars: Vec<Rectangle<(f64, f64)>> = spreads[index]
            .iter()
            .enumerate()
            .filter_map(|(case, spread)| {
                let spread = (*spread)?;
                let x0 = case as f64 + 0.1 + index as f64 * slot;
                Some(Rectangle::new(
                    [(x0, floor), (x0 + slot * 0.9, spread.median.max(floor))],
                    fill.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(plot_error)?
            .label(column.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], fill.filled()));
        let whiskers: Vec<PathElement<(f64, f64)>> = spreads[index]
            .iter()
            .enumerate()
            .filter_map(|(case, spread)| {
                let spread = (*spread)?;
                (spread.count > 1).then(|| {
                    let x = case as f64 + 0.1 + (index as f64 + 0.45) * slot;
                    PathElement::new(
                        vec![(x, spread.min.max(floor)), (x, spread.max.max(floor))],
                        BLACK.stroke_width(1),
                    )
                })
            })
            .collect();
        chart.draw_series(whiskers).map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(plot_error)?;
    // Each bar's median above its whisker, in the root's pixel coordinates.
    let value_style = TextStyle::from(("sans-serif", 10).into_font())
        .pos(Pos::new(HPos::Center, VPos::Bottom))
        .color(&BLACK);
    for (index, per_case) in spreads.iter().enumerate() {
        for (case, spread) in per_case.iter().enumerate() {
            let Some(spread) = spread else {
                continue;
            };
            let x = case as f64 + 0.1 + (index as f64 + 0.45) * slot;
            let (px, py) = chart.backend_coord(&(x, spread.max.max(floor)));
            root.draw(&Text::new(
                headline.format(spread.median),
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
    for (index, case) in group.cases.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(index as f64 + 0.5, floor));
        root.draw(&Text::new(
            short(&case.name),
            (x, y + 6),
            label_style.clone(),
        ))
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
