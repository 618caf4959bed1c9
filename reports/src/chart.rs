//! Line, scatter and bar charts with plotters, as PNG (embedded DejaVu Sans font) or SVG.
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::ReportError;
use crate::error::{commit, tmp_for, write_atomic};
use crate::format::format_value;

/// DejaVu Sans (Bitstream Vera license, see `assets/LICENSE-DejaVu.txt`), embedded so PNG rendering needs no system
/// fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";

fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Chart(
            "the embedded DejaVu Sans font could not be parsed".into(),
        ))
    }
}

fn chart_err<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// One named data series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points. Non-finite points, and non-positive coordinates on a logarithmic axis, are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a name and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// Builds one series per backend from the records of one metric, with x taken from each record by `x_of` (e.g. the
/// GPU count parsed from the case label; records where it returns `None` are skipped) and y = `value`. Series are
/// ordered by fidelity (analytical, simulated, measured) then backend name, and named `backend (fidelity)`; points keep
/// record order. Deterministic for a given input.
pub fn series_from_records(
    records: &[trainlab_core::Record],
    metric: &str,
    x_of: impl Fn(&trainlab_core::Record) -> Option<f64>,
) -> Vec<Series> {
    let mut groups: std::collections::BTreeMap<(trainlab_core::Fidelity, &str), Vec<(f64, f64)>> =
        std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| r.metric == metric) {
        if let Some(x) = x_of(r) {
            groups
                .entry((r.fidelity, r.backend.as_str()))
                .or_default()
                .push((x, r.value));
        }
    }
    groups
        .into_iter()
        .map(|((f, b), points)| Series {
            name: format!("{b} ({})", f.as_str()),
            points,
        })
        .collect()
}

/// How series are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChartKind {
    /// Lines through the points in increasing x, with point markers.
    #[default]
    Line,
    /// Markers only.
    Scatter,
    /// Grouped bars: one bar per point, series side by side at each x.
    Bar,
}

/// A chart description.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSpec {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The data.
    pub series: Vec<Series>,
    /// Logarithmic x axis (base 10).
    pub log_x: bool,
    /// Logarithmic y axis (base 10).
    pub log_y: bool,
    /// Line, scatter or bar.
    pub kind: ChartKind,
    /// Width in pixels (PNG) or user units (SVG).
    pub width: u32,
    /// Height in pixels (PNG) or user units (SVG).
    pub height: u32,
}

impl ChartSpec {
    /// A 900 x 560 chart with linear axes and no series yet.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        kind: ChartKind,
    ) -> Self {
        ChartSpec {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            log_x: false,
            log_y: false,
            kind,
            width: 900,
            height: 560,
        }
    }

    /// Adds a series.
    pub fn with_series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    /// Sets logarithmic axes.
    pub fn with_log(mut self, log_x: bool, log_y: bool) -> Self {
        self.log_x = log_x;
        self.log_y = log_y;
        self
    }
}

/// Colour-blind-friendly categorical palette (Okabe & Ito 2008, with black replaced by grey), then plotters'
/// `Palette99` for series beyond the eighth.
fn colour(i: usize) -> RGBColor {
    const BASE: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(213, 94, 0),
        RGBColor(240, 228, 66),
        RGBColor(90, 90, 90),
    ];
    if i < BASE.len() {
        BASE[i]
    } else {
        let c = Palette99::pick(i - BASE.len()).to_rgba();
        RGBColor(c.0, c.1, c.2)
    }
}

/// A series after cleaning: finite points (positive on log axes), in x order for lines.
struct Clean {
    name: String,
    points: Vec<(f64, f64)>,
}

fn clean(spec: &ChartSpec) -> Vec<Clean> {
    spec.series
        .iter()
        .map(|s| {
            let mut points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| {
                    x.is_finite() && y.is_finite() && (!spec.log_x || x > 0.0) && (!spec.log_y || y > 0.0)
                })
                .collect();
            if spec.kind == ChartKind::Line {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            Clean {
                name: s.name.clone(),
                points,
            }
        })
        .collect()
}

/// An axis tick label: [`format_value`], but whole numbers from 1e5 to below 1e10 with thousands separators
/// (`535,770` GPU-hours rather than `5.358e5`).
fn format_tick(v: f64) -> String {
    if (1e5..1e10).contains(&v.abs()) {
        crate::format::format_thousands(v)
    } else {
        format_value(v)
    }
}

/// Axis transform helpers: bars and padding are computed in the transformed (log10 for log axes) space.
fn fwd(v: f64, log: bool) -> f64 {
    if log { v.log10() } else { v }
}
fn inv(v: f64, log: bool) -> f64 {
    if log { 10f64.powf(v) } else { v }
}

/// The axis range covering `vals` (already valid for the axis), padded by 5% of the span in transformed space; a
/// degenerate span is widened (±1 decade on log axes, ±10% or ±1 on linear ones). `zero` forces 0 into a linear
/// range (bar baselines).
fn axis_range(vals: impl Iterator<Item = f64>, log: bool, zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = vals
        .map(|v| fwd(v, log))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if zero && !log {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let span = hi - lo;
    if span <= 0.0 {
        let w = if log || lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= w;
        hi += w;
    } else {
        let pad = span * 0.05;
        if !(zero && !log && lo == 0.0) {
            lo -= pad;
        }
        if !(zero && !log && hi == 0.0) {
            hi += pad;
        }
    }
    (inv(lo, log), inv(hi, log))
}

/// Tick positions for a logarithmic axis over `[lo, hi]` (both > 0): decades when they give at least 3 ticks
/// (thinned to at most 12; light lines at 2..9 when at most 6 decades), else 1-2-5 per decade, else 1..9 per decade,
/// else (a range narrower than about one octave) evenly spaced "nice" linear ticks. Plotters' own log ticks show
/// nothing at all for ranges under a decade.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let inside = |v: &f64| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9);
    let ticks_for = |ms: &[f64]| -> Vec<f64> {
        (e0..=e1)
            .flat_map(|e| ms.iter().map(move |m| m * 10f64.powi(e)))
            .filter(inside)
            .collect()
    };
    let decades = ticks_for(&[1.0]);
    if decades.len() >= 3 {
        let step = decades.len().div_ceil(12);
        let bold: Vec<f64> = decades.iter().copied().step_by(step).collect();
        let light = if decades.len() <= 7 {
            ticks_for(&[2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
        } else {
            Vec::new()
        };
        return (bold, light);
    }
    for ms in [&[1.0, 2.0, 5.0][..], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]] {
        let t = ticks_for(ms);
        if t.len() >= 3 {
            return (t, Vec::new());
        }
    }
    (linear_ticks(lo, hi), Vec::new())
}

/// About five evenly spaced ticks at multiples of 1, 2 or 5 times a power of ten.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    if !(raw.is_finite() && raw > 0.0) {
        return vec![lo];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Picks the plot corner holding the fewest data marks for the legend. Marks are given in axis-fraction coordinates
/// (`0..1` both ways); a bar occupies its whole height from `y_from` to `y`. Ties prefer upper right, upper left,
/// lower right, lower left.
fn legend_corner(marks: &[(f64, f64, f64)]) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let count = |right: bool, upper: bool| {
        marks
            .iter()
            .filter(|&&(x, y_from, y)| {
                let in_x = if right { x >= 0.6 } else { x <= 0.4 };
                let (a, b) = (y_from.min(y), y_from.max(y));
                let in_y = if upper { b >= 0.65 } else { a <= 0.35 };
                in_x && in_y
            })
            .count()
    };
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, right, upper) in corners {
        let c = count(right, upper);
        if c < best.0 {
            best = (c, pos);
        }
    }
    best.1
}

/// Bar geometry: for series `si` of `n`, at transformed x `tx`, with group width `group` (transformed units).
fn bar_span(tx: f64, si: usize, n: usize, group: f64) -> (f64, f64) {
    let w = group / n as f64;
    let left = tx - group / 2.0 + si as f64 * w;
    (left + 0.08 * w, left + 0.92 * w)
}

fn bar_group_width(data: &[Clean], log_x: bool) -> f64 {
    let mut xs: Vec<f64> = data
        .iter()
        .flat_map(|s| s.points.iter().map(|p| fwd(p.0, log_x)))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let min_gap = xs.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min);
    if min_gap.is_finite() && min_gap > 0.0 {
        0.8 * min_gap
    } else if log_x {
        0.5
    } else {
        xs.first().map(|x| (x.abs() * 0.4).max(0.8)).unwrap_or(0.8)
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &ChartSpec) -> Result<(), ReportError> {
    root.fill(&WHITE).map_err(chart_err)?;
    let data = clean(spec);
    let n_points: usize = data.iter().map(|s| s.points.len()).sum();
    let bar = spec.kind == ChartKind::Bar;
    let group = if bar { bar_group_width(&data, spec.log_x) } else { 0.0 };
    let xs = data
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect::<Vec<_>>();
    let x_ext: Vec<f64> = if bar {
        xs.iter()
            .flat_map(|&x| {
                let t = fwd(x, spec.log_x);
                [inv(t - group / 2.0, spec.log_x), inv(t + group / 2.0, spec.log_x)]
            })
            .collect()
    } else {
        xs
    };
    let (x0, x1) = axis_range(x_ext.into_iter(), spec.log_x, false);
    let (y0, y1) = axis_range(data.iter().flat_map(|s| s.points.iter().map(|p| p.1)), spec.log_y, bar);
    let frac = |v: f64, lo: f64, hi: f64, log: bool| {
        let (a, b, t) = (fwd(lo, log), fwd(hi, log), fwd(v, log));
        if b > a { (t - a) / (b - a) } else { 0.5 }
    };
    let y_base = if bar && !spec.log_y { 0.0 } else { y0 };
    let marks: Vec<(f64, f64, f64)> = data
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|&(x, y)| {
            let fy = frac(y, y0, y1, spec.log_y);
            let from = if bar { frac(y_base, y0, y1, spec.log_y) } else { fy };
            (frac(x, x0, x1, spec.log_x), from, fy)
        })
        .collect();
    let legend = legend_corner(&marks);
    let p = Plot {
        spec,
        data: &data,
        group,
        y_base: y0,
        legend,
    };
    // A log x axis over a few distinct values (GPU counts 1,024..16,384, say) is labelled at the data, not at
    // decades or 1-2-5 steps that fall between them.
    let mut distinct: Vec<f64> = data.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    // ... when they are far enough apart for their labels (a twentieth of the axis each).
    let spaced = distinct
        .windows(2)
        .all(|w| (w[1].log10() - w[0].log10()) >= (x1.log10() - x0.log10()) / 20.0);
    let (xt, xl) = if spec.log_x && !bar && (2..=10).contains(&distinct.len()) && spaced {
        (distinct, Vec::new())
    } else if spec.log_x {
        log_ticks(x0, x1)
    } else {
        Default::default()
    };
    let (yt, yl) = if spec.log_y {
        log_ticks(y0, y1)
    } else {
        Default::default()
    };
    let lx = || {
        (x0..x1)
            .log_scale()
            .with_key_points(xt.clone())
            .with_light_points(xl.clone())
    };
    let ly = || {
        (y0..y1)
            .log_scale()
            .with_key_points(yt.clone())
            .with_light_points(yl.clone())
    };
    match (spec.log_x, spec.log_y) {
        (false, false) => plot(root, &p, x0..x1, y0..y1)?,
        (true, false) => plot(root, &p, lx(), y0..y1)?,
        (false, true) => plot(root, &p, x0..x1, ly())?,
        (true, true) => plot(root, &p, lx(), ly())?,
    }
    if n_points == 0 {
        let (w, h) = root.dim_in_pixel();
        let style = TextStyle::from((FONT_NAME, 20).into_font()).color(&RGBColor(120, 120, 120));
        root.draw(&Text::new("no data", (w as i32 / 2 - 35, h as i32 / 2), style))
            .map_err(chart_err)?;
    }
    root.present().map_err(chart_err)
}

/// What [`plot`] needs besides the coordinates.
struct Plot<'a> {
    spec: &'a ChartSpec,
    data: &'a [Clean],
    group: f64,
    y_base: f64,
    legend: SeriesLabelPosition,
}

fn plot<DB, X, Y>(root: &DrawingArea<DB, Shift>, p: &Plot<'_>, x: X, y: Y) -> Result<(), ReportError>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (spec, data, group, y_base) = (p.spec, p.data, p.group, p.y_base);
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FONT_NAME, 22))
        .margin(14)
        .x_label_area_size(52)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)
        .map_err(chart_err)?;
    let tick = |v: &f64| format_tick(*v);
    chart
        .configure_mesh()
        .x_desc(spec.x_label.as_str())
        .y_desc(spec.y_label.as_str())
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FONT_NAME, 13))
        .axis_desc_style((FONT_NAME, 15))
        .light_line_style(RGBColor(0, 0, 0).mix(0.04))
        .bold_line_style(RGBColor(0, 0, 0).mix(0.12))
        .draw()
        .map_err(chart_err)?;
    let n = data.len().max(1);
    let mut labelled = false;
    for (si, s) in data.iter().enumerate() {
        let c = colour(si);
        let name = if s.name.is_empty() {
            format!("series {}", si + 1)
        } else {
            s.name.clone()
        };
        if s.points.is_empty() {
            continue;
        }
        labelled = true;
        match spec.kind {
            ChartKind::Line => {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                    .map_err(chart_err)?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(2)));
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(chart_err)?;
            }
            ChartKind::Scatter => {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(chart_err)?
                    .label(name)
                    .legend(move |(x, y)| Circle::new((x + 11, y), 4, c.filled()));
            }
            ChartKind::Bar => {
                let (lx, ly) = (spec.log_x, spec.log_y);
                chart
                    .draw_series(s.points.iter().map(|&(px, py)| {
                        let (a, b) = bar_span(fwd(px, lx), si, n, group);
                        let base = if ly { y_base } else { 0.0 };
                        Rectangle::new([(inv(a, lx), base), (inv(b, lx), py)], c.filled())
                    }))
                    .map_err(chart_err)?
                    .label(name)
                    .legend(move |(x, y)| Rectangle::new([(x + 4, y - 6), (x + 18, y + 6)], c.filled()));
            }
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(p.legend.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0, 0, 0).mix(0.4))
            .label_font((FONT_NAME, 13))
            .draw()
            .map_err(chart_err)?;
    }
    Ok(())
}

/// Renders `spec` as an SVG document (for inlining into HTML). Deterministic: same spec, same string.
pub fn chart_svg_string(spec: &ChartSpec) -> Result<String, ReportError> {
    check_size(spec)?;
    ensure_font()?;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (spec.width, spec.height)).into_drawing_area();
        draw(&root, spec)?;
    }
    Ok(buf)
}

fn check_size(spec: &ChartSpec) -> Result<(), ReportError> {
    if !(100..=10_000).contains(&spec.width) || !(100..=10_000).contains(&spec.height) {
        return Err(ReportError::invalid(
            "chart.width/height",
            format!("{}x{} is outside 100..=10000 pixels", spec.width, spec.height),
        ));
    }
    Ok(())
}

/// Renders `spec` to a PNG file and/or an SVG file (either may be `None`); parent directories are created.
pub fn render_chart(spec: &ChartSpec, png: Option<&Path>, svg: Option<&Path>) -> Result<(), ReportError> {
    check_size(spec)?;
    ensure_font()?;
    let mkparent = |p: &Path| -> Result<(), ReportError> {
        match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => std::fs::create_dir_all(d).map_err(|e| ReportError::io(d, e)),
            _ => Ok(()),
        }
    };
    if let Some(p) = png {
        mkparent(p)?;
        let tmp = tmp_for(p);
        {
            let root = BitMapBackend::new(&tmp, (spec.width, spec.height)).into_drawing_area();
            let drawn = draw(&root, spec);
            if let Err(e) = drawn {
                drop(root);
                let _ = std::fs::remove_file(&tmp);
                return Err(match e {
                    ReportError::Chart(m) => ReportError::Chart(format!("{}: {m}", p.display())),
                    other => other,
                });
            }
        }
        commit(&tmp, p)?;
    }
    if let Some(p) = svg {
        mkparent(p)?;
        let s = chart_svg_string(spec)?;
        write_atomic(p, s.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sane() {
        assert_eq!(axis_range([].into_iter(), false, false), (0.0, 1.0));
        assert_eq!(axis_range([].into_iter(), true, false), (1.0, 10.0));
        let (lo, hi) = axis_range([5.0].into_iter(), false, false);
        assert!(lo < 5.0 && hi > 5.0);
        let (lo, hi) = axis_range([100.0].into_iter(), true, false);
        assert!((lo - 10.0).abs() < 1e-9 && (hi - 1000.0).abs() < 1e-6);
        let (lo, hi) = axis_range([2.0, 4.0].into_iter(), false, true);
        assert_eq!(lo, 0.0);
        assert!(hi > 4.0);
    }

    #[test]
    fn log_ticks_adapt_to_the_range() {
        let (t, l) = log_ticks(0.5, 2000.0);
        assert_eq!(t, vec![1.0, 10.0, 100.0, 1000.0]);
        assert!(l.contains(&20.0));
        let (t, _) = log_ticks(1.9, 5.3);
        assert_eq!(t.len(), 4, "{t:?}"); // 2, 3, 4, 5
        let (t, _) = log_ticks(1.5, 40.0);
        assert_eq!(t, vec![2.0, 5.0, 10.0, 20.0]);
        let (t, _) = log_ticks(2.0e5, 2.4e5);
        assert!(t.len() >= 3 && t.iter().all(|v| (2.0e5..=2.4e5).contains(v)), "{t:?}");
        let (t, _) = log_ticks(1e-30, 1e30);
        assert!(t.len() <= 12 && t.len() >= 6);
    }

    #[test]
    fn linear_ticks_are_nice() {
        assert_eq!(
            linear_ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(linear_ticks(3.0, 27.0), vec![5.0, 10.0, 15.0, 20.0, 25.0]);
    }

    #[test]
    fn ticks_of_large_numbers_have_separators() {
        assert_eq!(format_tick(535_770.4), "535,770");
        assert_eq!(format_tick(-1_234_567.0), "-1,234,567");
        assert_eq!(format_tick(16_384.0), "16384");
        assert_eq!(format_tick(2.5e12), "2.5e12");
    }

    #[test]
    fn legend_avoids_data() {
        let top_right = [(0.9, 0.9, 0.9), (0.8, 0.8, 0.8)];
        assert!(matches!(legend_corner(&top_right), SeriesLabelPosition::UpperLeft));
        // Bars from the baseline fill the lower corners and the tall one the upper left.
        let bars = [(0.1, 0.0, 0.9), (0.9, 0.0, 0.2)];
        assert!(matches!(legend_corner(&bars), SeriesLabelPosition::UpperRight));
        let everywhere = [
            (0.1, 0.1, 0.1),
            (0.1, 0.9, 0.9),
            (0.9, 0.1, 0.1),
            (0.9, 0.9, 0.9),
            (0.9, 0.95, 0.95),
        ];
        assert!(matches!(legend_corner(&everywhere), SeriesLabelPosition::UpperLeft));
    }

    #[test]
    fn bars_do_not_overlap() {
        let (a0, a1) = bar_span(1.0, 0, 3, 0.9);
        let (b0, b1) = bar_span(1.0, 1, 3, 0.9);
        assert!(a0 < a1 && a1 < b0 && b0 < b1);
        assert!(a0 >= 1.0 - 0.45 - 1e-12);
    }
}
