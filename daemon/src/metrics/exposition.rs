//! The metrics of one scrape as data ([`Family`]), and its two text
//! encodings: the Prometheus text format 0.0.4 and OpenMetrics 1.0.
//!
//! Both encoders read the same families, so a metric's name, type, help
//! text and samples are written once. They differ only where the formats
//! do:
//!
//! | | text 0.0.4 | OpenMetrics 1.0 |
//! | --- | --- | --- |
//! | counter `x` | `# TYPE x_total counter`, sample `x_total` | `# TYPE x counter`, sample `x_total` |
//! | info `x` | `# TYPE x_info gauge`, sample `x_info ... 1` | `# TYPE x info`, sample `x_info ... 1` |
//! | escapes in HELP | `\\`, `\n` | `\\`, `\n`, `\"` |
//! | end | nothing | `# EOF` |

use std::fmt::Write as _;

/// A text format of the metrics endpoint, picked from the request's
/// `Accept` header by [`Format::negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Text004,
    /// OpenMetrics text, version 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with this `Accept` header value in:
    /// OpenMetrics when the client asks for `application/openmetrics-text`
    /// with a weight (`q`) above that of any `text/plain` or wildcard range
    /// it lists, else text 0.0.4 (also with no header, or one naming neither).
    /// Prometheus itself sends OpenMetrics at `q=1` and `text/plain` at
    /// `q=0.5`, so it gets OpenMetrics.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text004;
        };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut params = range.split(';');
            let media = params
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics > text {
            Format::OpenMetrics
        } else {
            Format::Text004
        }
    }
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic count; its sample is `NAME_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Constant labels with the value 1; its sample is `NAME_info`.
    Info,
    /// Observations in cumulative buckets (`NAME_bucket`, `_sum`, `_count`).
    Histogram,
}

/// Observations counted in cumulative buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// The buckets' upper bounds, ascending, without `+Inf`.
    pub bounds: &'static [f64],
    /// Observations at or below each bound (same length as `bounds`).
    pub cumulative: Vec<u64>,
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    /// The observations' sum.
    pub sum: f64,
}

/// A sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A whole number (counters, most gauges, info's 1).
    Int(u64),
    /// A real number (seconds, timestamps).
    Float(f64),
    /// A histogram's buckets, sum and count.
    Histogram(Histogram),
}

/// One series of a family: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values, in the order written.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// A metric family: a name (without the `_total` or `_info` that counters
/// and infos add to their samples), its type, its help text and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family's name, e.g. `tunl_tx_packets` (sample `tunl_tx_packets_total`).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// One line of help, ending in a single period.
    pub help: String,
    /// Its series; a family may have none (a label set not seen yet).
    pub samples: Vec<Sample>,
}

impl Family {
    /// A family with no samples yet; `help` gets exactly one final period.
    pub fn new(name: impl Into<String>, kind: Kind, help: &str) -> Family {
        Family {
            name: name.into(),
            kind,
            help: format!("{}.", help.trim().trim_end_matches('.')),
            samples: Vec::new(),
        }
    }

    /// Adds a series.
    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: Value) -> Family {
        self.samples.push(Sample { labels, value });
        self
    }

    /// Adds a series in place (for loops; [`Family::with`] is the builder form).
    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: Value) {
        self.samples.push(Sample { labels, value });
    }

    /// The name of the family's value samples in the text 0.0.4 format,
    /// which is also its `# HELP`/`# TYPE` name there.
    pub fn text004_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Info => format!("{}_info", self.name),
            Kind::Gauge | Kind::Histogram => self.name.clone(),
        }
    }

    /// Every sample name this family writes (`_bucket`, `_sum`, `_count`
    /// for a histogram), the same in both formats.
    pub fn sample_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
            _ => vec![self.text004_name()],
        }
    }
}

/// The families as text in `format`.
pub fn encode(families: &[Family], format: Format) -> String {
    let mut out = String::new();
    for family in families {
        let (meta_name, type_name) = match (format, family.kind) {
            (Format::Text004, Kind::Info) => (family.text004_name(), "gauge"),
            (Format::Text004, kind) => (family.text004_name(), type_word(kind)),
            (Format::OpenMetrics, kind) => (family.name.clone(), type_word(kind)),
        };
        let _ = writeln!(
            out,
            "# HELP {meta_name} {}",
            escape_help(&family.help, format)
        );
        let _ = writeln!(out, "# TYPE {meta_name} {type_name}");
        let sample_name = family.text004_name();
        for sample in &family.samples {
            match &sample.value {
                Value::Int(v) => {
                    let _ = writeln!(out, "{sample_name}{} {v}", labels(&sample.labels, None));
                }
                Value::Float(v) => {
                    let _ = writeln!(
                        out,
                        "{sample_name}{} {}",
                        labels(&sample.labels, None),
                        float(*v)
                    );
                }
                Value::Histogram(h) => write_histogram(&mut out, &family.name, sample, h),
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn type_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Info => "info",
        Kind::Histogram => "histogram",
    }
}

fn write_histogram(out: &mut String, name: &str, sample: &Sample, h: &Histogram) {
    for (bound, n) in h.bounds.iter().zip(&h.cumulative) {
        let le = float(*bound);
        let _ = writeln!(
            out,
            "{name}_bucket{} {n}",
            labels(&sample.labels, Some(&le))
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{} {}",
        labels(&sample.labels, Some("+Inf")),
        h.count
    );
    let plain = labels(&sample.labels, None);
    let _ = writeln!(out, "{name}_sum{plain} {}", float(h.sum));
    let _ = writeln!(out, "{name}_count{plain} {}", h.count);
}

/// `{a="1",b="2"}` (with `le` last when given), or nothing without labels.
fn labels(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let all = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape_label(v));
    }
    s.push('}');
    s
}

/// A real number as both formats read it: Rust's shortest round-trip form,
/// which has no exponent, and `+Inf`/`-Inf`/`NaN` for the rest.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str, format: Format) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if format == Format::OpenMetrics => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.005, 1.0];

    fn families() -> Vec<Family> {
        vec![
            Family::new("t_packets", Kind::Counter, "Packets \"sent\" \\ here..")
                .with(vec![], Value::Int(7)),
            Family::new("t_mtu_bytes", Kind::Gauge, "MTU")
                .with(vec![("node", "10.0.0.1".to_owned())], Value::Int(1480)),
            Family::new("t_build", Kind::Info, "Build")
                .with(vec![("version", "1\"2\n".to_owned())], Value::Int(1)),
            Family::new("t_apply_seconds", Kind::Histogram, "Apply time").with(
                vec![],
                Value::Histogram(Histogram {
                    bounds: BOUNDS,
                    cumulative: vec![1, 2],
                    count: 3,
                    sum: 2.5,
                }),
            ),
        ]
    }

    #[test]
    fn text_004_names_counters_and_infos_by_their_samples() {
        let text = encode(&families(), Format::Text004);
        assert_eq!(
            text,
            "# HELP t_packets_total Packets \"sent\" \\\\ here.\n\
             # TYPE t_packets_total counter\n\
             t_packets_total 7\n\
             # HELP t_mtu_bytes MTU.\n\
             # TYPE t_mtu_bytes gauge\n\
             t_mtu_bytes{node=\"10.0.0.1\"} 1480\n\
             # HELP t_build_info Build.\n\
             # TYPE t_build_info gauge\n\
             t_build_info{version=\"1\\\"2\\n\"} 1\n\
             # HELP t_apply_seconds Apply time.\n\
             # TYPE t_apply_seconds histogram\n\
             t_apply_seconds_bucket{le=\"0.005\"} 1\n\
             t_apply_seconds_bucket{le=\"1\"} 2\n\
             t_apply_seconds_bucket{le=\"+Inf\"} 3\n\
             t_apply_seconds_sum 2.5\n\
             t_apply_seconds_count 3\n"
        );
    }

    #[test]
    fn openmetrics_names_families_and_ends_in_eof() {
        let text = encode(&families(), Format::OpenMetrics);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP t_packets Packets \\\"sent\\\" \\\\ here.");
        assert_eq!(lines[1], "# TYPE t_packets counter");
        assert_eq!(lines[2], "t_packets_total 7");
        assert_eq!(lines[7], "# TYPE t_build info");
        assert_eq!(lines[8], "t_build_info{version=\"1\\\"2\\n\"} 1");
        assert_eq!(lines.last(), Some(&"# EOF"));
        // Samples are the same lines in both formats.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            samples(&text),
            samples(&encode(&families(), Format::Text004))
        );
    }

    #[test]
    fn accept_picks_the_format() {
        use Format::*;
        assert_eq!(Format::negotiate(None), Text004);
        assert_eq!(Format::negotiate(Some("text/plain")), Text004);
        assert_eq!(Format::negotiate(Some("*/*")), Text004);
        assert_eq!(Format::negotiate(Some("application/json")), Text004);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some(
                "Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"
            )),
            OpenMetrics
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            OpenMetrics
        );
        // A client preferring text gets text.
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"
            )),
            Text004
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Text004
        );
    }
}
