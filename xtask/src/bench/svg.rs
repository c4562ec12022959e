//! Bar charts as SVG text, for the benchmark report: one group of bars per category,
//! one bar per series, each bar the median with a line from min to max.

use std::fmt::Write as _;

/// One server's values, one per category (`None`: not measured).
pub(crate) struct Series<'a> {
    pub name: &'a str,
    /// (median, min, max) per category.
    pub values: Vec<Option<(f64, f64, f64)>>,
}

const COLORS: [&str; 4] = ["#1f5fa8", "#e07b1a", "#2e9440", "#8c4fb3"];
const W: f64 = 760.0;
const H: f64 = 380.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 44.0;

/// A grouped bar chart. With `log`, the value axis is logarithmic (for latencies
/// that span decades).
pub(crate) fn bars(
    title: &str,
    unit: &str,
    categories: &[String],
    series: &[Series],
    log: bool,
) -> String {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .flat_map(|&(m, lo, hi)| [m, lo, hi])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let top = all
        .iter()
        .copied()
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    // No finite value at all (every run failed, or no client reported it): one
    // decade, so the axis below stays finite rather than spanning every exponent.
    let bottom = all.iter().copied().fold(f64::INFINITY, f64::min).min(top);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    // Value to y coordinate, and the axis ticks.
    let (lo_exp, hi_exp) = (
        bottom.log10().floor().min(top.log10().floor()),
        top.log10().ceil().max(bottom.log10().floor() + 1.0),
    );
    // At most 40 decades: f64 positives span about 630, and a tick per decade over
    // all of them would be a useless chart.
    let lo_exp = lo_exp.max(hi_exp - 40.0);
    let (axis_max, ticks): (f64, Vec<f64>) = if log {
        (
            10f64.powf(hi_exp),
            (lo_exp as i32..=hi_exp as i32)
                .map(|e| 10f64.powi(e))
                .collect(),
        )
    } else {
        let step = nice_step(top * 1.1 / 5.0);
        let n = (top * 1.1 / step).ceil().max(1.0) as usize;
        (step * n as f64, (0..=n).map(|i| step * i as f64).collect())
    };
    let y = |v: f64| -> f64 {
        let f = if log {
            if v <= 0.0 {
                0.0
            } else {
                ((v.log10() - lo_exp) / (hi_exp - lo_exp)).clamp(0.0, 1.0)
            }
        } else {
            (v / axis_max).clamp(0.0, 1.0)
        };
        TOP + plot_h * (1.0 - f)
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let _ = writeln!(
        svg,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(unit)
    );
    for t in &ticks {
        let ty = y(*t);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            ty + 4.0,
            number(*t)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>",
        TOP + plot_h,
        W - RIGHT,
        TOP + plot_h,
        TOP + plot_h
    );
    // Legend.
    for (i, s) in series.iter().enumerate() {
        let x = LEFT + 150.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"42\">{}</text>",
            COLORS[i % COLORS.len()],
            x + 16.0,
            escape(s.name)
        );
    }
    let group = plot_w / categories.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (c, cat) in categories.iter().enumerate() {
        let gx = LEFT + group * c as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + group / 2.0,
            TOP + plot_h + 18.0,
            escape(cat)
        );
        for (i, s) in series.iter().enumerate() {
            let Some(&Some((med, lo, hi))) = s.values.get(c) else {
                continue;
            };
            if !med.is_finite() {
                continue;
            }
            let x = gx + group * 0.1 + bar * i as f64;
            let (y0, y1) = (y(med), TOP + plot_h);
            let cx = x + bar / 2.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                 <title>{}: {} (min {}, max {})</title></rect>",
                bar * 0.92,
                (y1 - y0).max(0.0),
                COLORS[i % COLORS.len()],
                escape(s.name),
                number(med),
                number(lo),
                number(hi)
            );
            let _ = writeln!(
                svg,
                "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#222\"/>\
                 <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                y(lo),
                y(hi),
                y(hi).min(y0) - 4.0,
                number(med)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// Three significant digits, no exponent.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        let digits = (2.0 - a.log10().floor()) as usize;
        format!("{v:.digits$}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_numbers() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(300.0), 500.0);
        assert_eq!(number(3.4123), "3.41");
        assert_eq!(number(18281.4), "18281");
        assert_eq!(number(0.0123), "0.0123");
    }

    #[test]
    fn a_chart_without_any_value_is_small_and_finite() {
        for log in [false, true] {
            let svg = bars(
                "latency",
                "µs",
                &["R1".into()],
                &[Series {
                    name: "quay",
                    values: vec![Some((f64::NAN, f64::NAN, f64::NAN))],
                }],
                log,
            );
            assert!(svg.len() < 20_000, "{} bytes", svg.len());
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn a_chart_has_a_bar_per_value() {
        let svg = bars(
            "goodput",
            "Gbit/s",
            &["B1".into(), "B2".into()],
            &[
                Series {
                    name: "quay",
                    values: vec![Some((3.4, 3.2, 3.6)), Some((3.0, 2.9, 3.1))],
                },
                Series {
                    name: "a<b",
                    values: vec![Some((2.5, 2.4, 2.6)), None],
                },
            ],
            false,
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("a&lt;b"));
        assert!(!svg.contains("NaN"));
        let log = bars(
            "latency",
            "µs",
            &["R3 p50".into()],
            &[Series {
                name: "quay",
                values: vec![Some((268.0, 250.0, 300.0))],
            }],
            true,
        );
        assert!(log.contains(">100<") && log.contains(">1000<"));
    }
}
