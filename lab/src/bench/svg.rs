//! The report as a self-contained SVG bar chart (`tunl bench --svg`): one
//! panel per main figure, a bar per path with min-max whiskers.

use std::fmt::Write as _;

use super::{BenchReport, Datapath, Metric, format_number};

/// One panel of the chart: a figure's three bars.
#[derive(Debug, Clone)]
pub struct ChartPanel {
    /// Title.
    pub title: String,
    /// Unit, shown under the title.
    pub unit: String,
    /// One bar per path.
    pub bars: Vec<ChartBar>,
}

/// One bar of a [`ChartPanel`].
#[derive(Debug, Clone)]
pub struct ChartBar {
    /// The path's name.
    pub name: String,
    /// `(median, min, max)`; `None` for a missing value.
    pub value: Option<(f64, f64, f64)>,
}

/// Bar colours: direct, vxlan, tunl.
const COLOURS: [&str; 3] = ["#8c8c8c", "#4e79a7", "#f28e2b"];

/// The chart of the report's main figures ([`Metric::CHART`]).
pub fn svg_chart(report: &BenchReport) -> String {
    let panels: Vec<ChartPanel> = Metric::CHART
        .iter()
        .filter_map(|&m| report.figure(m))
        .map(|f| ChartPanel {
            title: f.label.to_owned(),
            unit: format!(
                "{}{}",
                f.unit,
                if f.higher_is_better {
                    ", higher is better"
                } else {
                    ", lower is better"
                }
            ),
            bars: Datapath::ALL
                .iter()
                .map(|&p| ChartBar {
                    name: p.name().to_owned(),
                    value: f.get(p).map(|s| (s.median, s.min, s.max)),
                })
                .collect(),
        })
        .collect();
    let s = &report.settings;
    let m = &report.machine;
    let title = format!(
        "tunl bench: direct veth vs kernel VXLAN vs tunl ({} round(s) of {} s, {} worker(s))",
        s.rounds, s.seconds, s.workers
    );
    let subtitle = format!(
        "{} ({} cores), kernel {}, {}; bars: median, whiskers: min-max",
        m.cpu_model, m.cores, m.kernel, m.date
    );
    build_svg(&title, &subtitle, &panels)
}

/// Grouped bars, one panel per figure (each with its own scale), values
/// labelled, min-max whiskers; a self-contained SVG document.
pub fn build_svg(title: &str, subtitle: &str, panels: &[ChartPanel]) -> String {
    const COLS: usize = 4;
    const PW: f64 = 250.0; // panel width
    const PH: f64 = 250.0; // panel height
    const TOP: f64 = 80.0; // title and legend
    const PLOT_TOP: f64 = 52.0; // within a panel: below title and unit
    const PLOT_H: f64 = 150.0;
    const BAR_W: f64 = 50.0;
    let cols = COLS.min(panels.len().max(1));
    let rows = panels.len().div_ceil(COLS).max(1);
    let width = (cols as f64 * PW).max(760.0);
    let height = TOP + rows as f64 * PH + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="12" y="24" font-size="16" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="12" y="44" font-size="11" fill="#444">{}</text>"##,
        xml_escape(subtitle)
    );
    // Legend, from the first panel's bar names.
    if let Some(first) = panels.first() {
        let mut x = 12.0;
        for (i, ChartBar { name, .. }) in first.bars.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="56" width="12" height="12" fill="{colour}"/><text x="{}" y="66" font-size="12">{}</text>"#,
                x + 16.0,
                xml_escape(name)
            );
            x += 90.0;
        }
    }
    for (i, panel) in panels.iter().enumerate() {
        let ox = (i % COLS) as f64 * PW;
        let oy = TOP + (i / COLS) as f64 * PH;
        let cx = ox + PW / 2.0;
        let _ = writeln!(s, r#"<g class="panel">"#);
        let _ = writeln!(
            s,
            r#"<text x="{cx}" y="{}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
            oy + 18.0,
            xml_escape(&panel.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{cx}" y="{}" font-size="10" fill="#555" text-anchor="middle">{}</text>"##,
            oy + 33.0,
            xml_escape(&panel.unit)
        );
        let top = panel
            .bars
            .iter()
            .filter_map(|b| b.value.map(|(med, _, max)| med.max(max)))
            .fold(0.0f64, f64::max);
        let scale = if top > 0.0 { PLOT_H / top } else { 0.0 };
        let base = oy + PLOT_TOP + 14.0 + PLOT_H;
        let n = panel.bars.len().max(1) as f64;
        let gap = (PW - 40.0 - n * BAR_W) / (n + 1.0);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{base}" x2="{}" y2="{base}" stroke="#333" stroke-width="1"/>"##,
            ox + 20.0,
            ox + PW - 20.0
        );
        for (j, ChartBar { name, value }) in panel.bars.iter().enumerate() {
            let x = ox + 20.0 + gap + j as f64 * (BAR_W + gap);
            let colour = COLOURS[j % COLOURS.len()];
            let mid = x + BAR_W / 2.0;
            let _ = writeln!(
                s,
                r#"<text x="{mid}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
                base + 14.0,
                xml_escape(name)
            );
            let Some((med, min, max)) = value else {
                let _ = writeln!(
                    s,
                    r##"<text x="{mid}" y="{}" font-size="11" fill="#777" text-anchor="middle">n/a</text>"##,
                    base - 4.0
                );
                continue;
            };
            let h = (med.max(0.0) * scale).max(0.5);
            let y = base - h;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{BAR_W}" height="{h:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                xml_escape(name),
                format_number(*med)
            );
            let (ymin, ymax) = (base - min.max(0.0) * scale, base - max.max(0.0) * scale);
            if (ymin - ymax).abs() > 0.5 {
                let _ = writeln!(
                    s,
                    r##"<path d="M{mid:.1} {ymin:.1}V{ymax:.1}M{:.1} {ymin:.1}h10M{:.1} {ymax:.1}h10" stroke="#222" stroke-width="1" fill="none"/>"##,
                    mid - 5.0,
                    mid - 5.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{mid:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                y.min(ymax) - 4.0,
                format_number(*med)
            );
        }
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::bench::report::sample_report;

    use super::*;

    #[test]
    fn svg_is_well_formed_and_labelled() {
        let r = sample_report();
        let svg = svg_chart(&r);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Escaped text, no raw markup characters from data.
        assert!(svg.contains("Test &lt;CPU&gt; &amp; co"));
        assert!(!svg.contains("<CPU>"));
        // One panel per chart figure, value labels present, n/a for missing.
        assert_eq!(
            svg.matches("<g class=\"panel\">").count(),
            Metric::CHART.len()
        );
        assert!(svg.contains(">8.25</text>") && svg.contains(">18.5</text>"));
        assert!(svg.contains(">n/a</text>"));
        // Balanced groups, and every element is closed.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        // The tallest bar of a panel spans the plot height.
        let panel = build_svg(
            "t",
            "s",
            &[ChartPanel {
                title: "x".into(),
                unit: "u".into(),
                bars: vec![
                    ChartBar {
                        name: "a".into(),
                        value: Some((10.0, 10.0, 10.0)),
                    },
                    ChartBar {
                        name: "b".into(),
                        value: Some((5.0, 5.0, 5.0)),
                    },
                ],
            }],
        );
        assert!(panel.contains("height=\"150.0\""), "{panel}");
        assert!(panel.contains("height=\"75.0\""), "{panel}");
    }
}
