//! The report as a text table for the terminal: one row per figure,
//! median (min-max) per path and the tunl / vxlan ratio, then the added
//! latency, the large-table figures, the settings and the machine.

use std::fmt::Write as _;

use super::{BenchReport, Metric, Summary};

/// A number with about three significant digits.
pub fn format_number(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".to_owned()
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A table cell: the median, with the spread `(min-max)` when there is more
/// than one sample; `-` for no value.
pub fn format_cell(summary: Option<&Summary>, metric: Metric) -> String {
    match summary {
        None => "-".to_owned(),
        Some(s) if s.samples.len() > 1 => format!(
            "{} ({}-{})",
            metric.format(s.median),
            metric.format(s.min),
            metric.format(s.max)
        ),
        Some(s) => metric.format(s.median),
    }
}

/// The report as a text table: one row per figure, columns direct, vxlan,
/// tunl and tunl / vxlan; then the added latency, the large-table figures
/// and the machine.
pub fn format_table(report: &BenchReport) -> String {
    let header = ["figure", "unit", "direct", "vxlan", "tunl", "tunl/vxlan"];
    let mut rows: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for f in &report.figures {
        rows.push([
            f.label.to_owned(),
            f.unit.to_owned(),
            format_cell(f.direct.as_ref(), f.metric),
            format_cell(f.vxlan.as_ref(), f.metric),
            format_cell(f.tunl.as_ref(), f.metric),
            f.tunl_over_vxlan
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let s_ = &report.settings;
    let _ = writeln!(
        s,
        "tunl bench: {} round(s) of {} s, {} worker(s); median (min-max) over rounds",
        s_.rounds, s_.seconds, s_.workers
    );
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if c < 2 {
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
        if i == 0 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(s, "{}", "-".repeat(rule));
        }
    }
    if let Some(a) = report.added_latency {
        let _ = writeln!(
            s,
            "tunl adds {:+.1} µs median round-trip latency over vxlan (p99: {:+.1} µs)",
            a.median_us, a.p99_us
        );
    }
    if let Some(t) = report.large_table {
        let _ = writeln!(
            s,
            "tunl daemon with {} routes: VmRSS {:.1} MiB, VmHWM {:.1} MiB, routes installed in {:.1} s",
            t.routes, t.vm_rss_mib, t.vm_hwm_mib, t.startup_seconds
        );
    }
    if let Some(f) = &report.flood {
        s.push_str(&super::format_flood(f));
    }
    let _ = writeln!(
        s,
        "tunl settings: {} worker(s), transmit via {}, {}, {}",
        s_.workers,
        match s_.underlay.as_str() {
            "raw" => "raw IP socket (default)",
            "packet" => "AF_PACKET (underlay packet)",
            "xdp" => "AF_XDP (underlay xdp)",
            "auto" => "the fastest underlay that works (auto)",
            _ => "?",
        },
        if s_.busy_poll_us == 0 {
            "no busy polling (default)".to_owned()
        } else {
            format!(
                "workers busy-poll {} µs after the last packet",
                s_.busy_poll_us
            )
        },
        if s_.poll_interval_us == 0 || s_.poll_quiet_us == 0 {
            "workers block in epoll when dry".to_owned()
        } else {
            format!(
                "under load workers poll every {} µs until {} µs without packets",
                s_.poll_interval_us, s_.poll_quiet_us
            )
        }
    );
    let m = &report.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} cores), kernel {}, {}; CPU figures: {}",
        m.cpu_model, m.cores, m.kernel, m.date, s_.cpu_unit_note
    );
    s
}

#[cfg(test)]
mod tests {
    use crate::bench::report::sample_report;

    use super::*;

    #[test]
    fn table_rows_and_columns() {
        let r = sample_report();
        let t = format_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        let header = lines[1];
        for col in ["figure", "unit", "direct", "vxlan", "tunl", "tunl/vxlan"] {
            assert!(header.contains(col), "{header}");
        }
        let tcp = lines
            .iter()
            .find(|l| l.starts_with("TCP, 1 stream"))
            .unwrap();
        assert!(tcp.contains("18.5 (18.0-19.0)"), "{tcp}");
        assert!(tcp.contains("8.25 (8.00-8.50)"), "{tcp}");
        assert!(tcp.trim_end().ends_with("0.50x"), "{tcp}");
        let rss = lines
            .iter()
            .find(|l| l.starts_with("tunl daemon peak"))
            .unwrap();
        assert!(
            rss.contains("12.5") && rss.trim_end().ends_with('-'),
            "{rss}"
        );
        assert!(t.contains("+20.0 µs median"), "{t}");
        // Every data row lines up with the header's right-aligned columns.
        let width = header.chars().count();
        assert!(lines[2].chars().all(|c| c == '-') && lines[2].chars().count() == width);
        assert_eq!(format_cell(None, Metric::Udp64), "-");
        let retrans = Summary::of(vec![2.0, 5884.0, 791.0]);
        assert_eq!(
            format_cell(retrans.as_ref(), Metric::TcpRetransmits),
            "791 (2-5884)"
        );
        assert_eq!(format_number(123456.7), "123457");
        assert_eq!(format_number(0.01234), "0.012");
    }
}
