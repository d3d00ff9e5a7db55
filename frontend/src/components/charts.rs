//! Charts drawn as inline SVG by the dashboard itself: stacked bars (the
//! call-rate chart, D2) and lines over time (monitoring, M1).
//!
//! Policy: no charting library. Leptos renders the SVG elements like any
//! other view, so a chart costs a few kilobytes of wasm and nothing is
//! downloaded at run time (the measurement and the alternatives weighed are
//! in docs/ARCHITECTURE.md, "Charts"). Every chart has a y axis with round
//! ticks, labels on the x axis, a legend, and a tooltip per bar or time slot
//! (an SVG `<title>`, shown by the browser on hover, plus a tooltip line under
//! the chart that follows the pointer). Values are plain `f64` for geometry
//! only; labels come from the caller's formatter, so money is still shown
//! through the integer micro-credit helpers.

use leptos::prelude::*;
pub use tally_common::format::{count as count_label, nice_scale};

const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 28.0;

/// A series: its name in the legend and its CSS colour class (`series-ok`,
/// `series-err`, `series-a` … `series-d`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChartSeries {
    pub name: &'static str,
    pub class: &'static str,
}

/// One bar of a stacked bar chart: its x-axis label (may be empty to skip
/// it), its tooltip, and one value per series, stacked bottom up.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    pub tooltip: String,
    pub values: Vec<f64>,
}

/// One time slot of a line chart: its x label (may be empty), its tooltip
/// heading, and one value per series (`None` where there is no data).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub label: String,
    pub tooltip: String,
    pub values: Vec<Option<f64>>,
}

/// A value formatter for the y axis and tooltips.
pub type Format = fn(f64) -> String;

/// The y axis: grid lines and labels for `0..=max` in `step`s.
fn y_axis(width: f64, max: f64, step: f64, format: Format) -> impl IntoView {
    let plot_h = HEIGHT - TOP - BOTTOM;
    let ticks = (max / step).round() as usize;
    (0..=ticks)
        .map(|i| {
            let v = step * i as f64;
            let y = TOP + plot_h - plot_h * v / max;
            view! {
                <g class="tick">
                    <line x1=LEFT x2={width - RIGHT} y1=y y2=y class="grid" />
                    <text x={LEFT - 6.0} y={y + 4.0} text-anchor="end">{format(v)}</text>
                </g>
            }
        })
        .collect_view()
}

/// A chart's width in SVG units and its y scale.
struct Scale {
    width: f64,
    max: f64,
    step: f64,
    format: Format,
}

/// What every chart draws around its plot: the figure, the y axis and the
/// baseline, the legend and the hover tooltip line.
fn frame(
    label: String,
    scale: Scale,
    series: Vec<ChartSeries>,
    hover: RwSignal<Option<String>>,
    plot: impl IntoView,
) -> impl IntoView {
    let Scale {
        width,
        max,
        step,
        format,
    } = scale;
    let base = HEIGHT - BOTTOM;
    let aria = label.clone();
    view! {
        <figure class="chart" aria-label=aria>
            <svg viewBox=format!("0 0 {width} {HEIGHT}") role="img">
                <title>{label}</title>
                {y_axis(width, max, step, format)}
                <line x1=LEFT x2={width - RIGHT} y1=base y2=base class="axis" />
                {plot}
            </svg>
            <figcaption>
                <Legend series />
                <span class="tooltip" data-testid="chart-tooltip">
                    {move || hover.get().unwrap_or_default()}
                </span>
            </figcaption>
        </figure>
    }
}

#[component]
fn Legend(series: Vec<ChartSeries>) -> impl IntoView {
    view! {
        <div class="legend">
            {series
                .into_iter()
                .map(|s| view! { <span class="legend-item"><i class=s.class></i>{s.name}</span> })
                .collect_view()}
        </div>
    }
}

/// Stacked bars, one per slot, each with a hover tooltip. Bars carry
/// `data-testid="chart-bar"` and `data-values` (the values joined by `,`)
/// so tests can read what is drawn.
#[component]
pub fn StackedBars(
    series: Vec<ChartSeries>,
    bars: Vec<Bar>,
    format: Format,
    #[prop(into)] label: String,
    /// Width in SVG units; about the width drawn in pixels keeps text at its CSS size.
    #[prop(default = 800.0)]
    width: f64,
) -> impl IntoView {
    let hover = RwSignal::new(None::<String>);
    let top = bars
        .iter()
        .map(|b| b.values.iter().sum::<f64>())
        .fold(0.0, f64::max);
    // Counts: at least four whole-number ticks.
    let (max, step) = nice_scale(top.max(4.0));
    let plot_w = width - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / bars.len().max(1) as f64;
    let bar_w = (slot * 0.72).max(1.0);
    let classes: Vec<&'static str> = series.iter().map(|s| s.class).collect();
    let drawn = bars
        .into_iter()
        .enumerate()
        .map(|(i, bar)| {
            let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
            let mut base = TOP + plot_h;
            let segments = bar
                .values
                .iter()
                .zip(&classes)
                .filter(|(v, _)| **v > 0.0)
                .map(|(v, class)| {
                    let h = plot_h * v / max;
                    base -= h;
                    view! { <rect x=x y=base width=bar_w height=h class=*class /> }
                })
                .collect_view();
            let values = bar
                .values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let tip = bar.tooltip.clone();
            let label = (!bar.label.is_empty()).then(|| {
                view! {
                    <text x={x + bar_w / 2.0} y={HEIGHT - 10.0} text-anchor="middle" class="x-label">
                        {bar.label.clone()}
                    </text>
                }
            });
            view! {
                <g
                    class="bar"
                    data-testid="chart-bar"
                    data-values=values
                    on:mouseenter=move |_| hover.set(Some(tip.clone()))
                    on:mouseleave=move |_| hover.set(None)
                >
                    <title>{bar.tooltip.clone()}</title>
                    // A full-height hit area so thin bars are easy to hover.
                    <rect x={LEFT + slot * i as f64} y=TOP width=slot height=plot_h class="hit" />
                    {segments}
                </g>
                {label}
            }
        })
        .collect_view();
    let scale = Scale {
        width,
        max,
        step,
        format,
    };
    frame(label, scale, series, hover, drawn)
}

/// Lines over time slots, one per series, with a hover tooltip per slot that
/// lists every series' value.
#[component]
pub fn LineChart(
    series: Vec<ChartSeries>,
    points: Vec<Point>,
    format: Format,
    #[prop(into)] label: String,
    /// Width in SVG units; about the width drawn in pixels keeps text at its CSS size.
    #[prop(default = 800.0)]
    width: f64,
) -> impl IntoView {
    let hover = RwSignal::new(None::<String>);
    let top = points
        .iter()
        .flat_map(|p| p.values.iter().flatten().copied())
        .fold(0.0, f64::max);
    let (max, step) = nice_scale(top);
    let plot_w = width - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = points.len().max(1);
    let slot = plot_w / n as f64;
    let x_of = move |i: usize| LEFT + slot * i as f64 + slot / 2.0;
    let y_of = move |v: f64| TOP + plot_h - plot_h * v / max;
    let lines = series
        .iter()
        .enumerate()
        .map(|(s, serie)| {
            // Gaps (slots without data) break the line.
            let mut d = String::new();
            let mut pen_down = false;
            for (i, p) in points.iter().enumerate() {
                match p.values.get(s).copied().flatten() {
                    Some(v) => {
                        let cmd = if pen_down { 'L' } else { 'M' };
                        d.push_str(&format!("{cmd}{:.1},{:.1} ", x_of(i), y_of(v)));
                        pen_down = true;
                    }
                    None => pen_down = false,
                }
            }
            let dots = (points.len() <= 60).then(|| {
                points
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.values.get(s).copied().flatten().map(|v| (i, v)))
                    .map(|(i, v)| view! { <circle cx=x_of(i) cy=y_of(v) r="2.5" class=serie.class /> })
                    .collect_view()
            });
            view! {
                <path d=d class=format!("line {}", serie.class) data-testid="chart-line" />
                {dots}
            }
        })
        .collect_view();
    let names: Vec<&'static str> = series.iter().map(|s| s.name).collect();
    let slots = points
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let parts: Vec<String> = names
                .iter()
                .zip(&p.values)
                .map(|(name, v)| match v {
                    Some(v) => format!("{name} {}", format(*v)),
                    None => format!("{name} –"),
                })
                .collect();
            let tip = format!("{}: {}", p.tooltip, parts.join(" · "));
            let hover_tip = tip.clone();
            let label = (!p.label.is_empty()).then(|| {
                view! {
                    <text x=x_of(i) y={HEIGHT - 10.0} text-anchor="middle" class="x-label">{p.label.clone()}</text>
                }
            });
            view! {
                <g
                    class="slot"
                    data-testid="chart-slot"
                    on:mouseenter=move |_| hover.set(Some(hover_tip.clone()))
                    on:mouseleave=move |_| hover.set(None)
                >
                    <title>{tip}</title>
                    <rect x={LEFT + slot * i as f64} y=TOP width=slot height=plot_h class="hit" />
                </g>
                {label}
            }
        })
        .collect_view();
    let scale = Scale {
        width,
        max,
        step,
        format,
    };
    frame(label, scale, series, hover, (lines, slots))
}
