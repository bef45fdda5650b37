//! `tunl bench` end to end, shortened (1 round of 1-second measurements):
//! needs root, as under CI, and does not skip without it.

use std::path::Path;

use tunl_lab::bench::{self, BenchArgs, Datapath, Metric};

#[test]
#[ignore = "needs root: scripts/test"]
fn quick_bench_measures_every_path_and_writes_json_and_svg() {
    let dir = std::env::temp_dir().join(format!("tunl-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("bench.json");
    let svg_path = dir.join("bench.svg");
    let args = BenchArgs {
        seconds: 1,
        rounds: 1,
        json: Some(json_path.clone()),
        svg: Some(svg_path.clone()),
        ..BenchArgs::default()
    };
    let report = bench::run(&args, Path::new(env!("CARGO_BIN_EXE_tunl"))).expect("tunl bench");

    // Positive figures for all three paths.
    // (The charted figures: the ones every path has.)
    for metric in Metric::CHART {
        let figure = report.figure(metric).expect("every figure is reported");
        for path in Datapath::ALL {
            let s = figure
                .get(path)
                .unwrap_or_else(|| panic!("{metric:?} has no {path:?} value"));
            assert_eq!(s.samples.len(), 1, "{metric:?} {path:?}: one round");
            assert!(
                s.median > 0.0 && s.median.is_finite(),
                "{metric:?} {path:?}: {s:?}"
            );
            assert!(s.min <= s.median && s.median <= s.max);
        }
        assert!(figure.tunl_over_vxlan.is_some_and(|r| r > 0.0));
    }
    // tunl-only figures.
    for metric in [Metric::CpuTunl, Metric::PeakRss, Metric::UnderlayFrames] {
        let figure = report.figure(metric).unwrap();
        assert!(figure.direct.is_none() && figure.vxlan.is_none());
        assert!(
            figure.tunl.as_ref().is_some_and(|s| s.median > 0.0),
            "{metric:?}"
        );
    }
    let p99 = report.figure(Metric::LatencyP99).unwrap();
    let med = report.figure(Metric::LatencyMedian).unwrap();
    for path in Datapath::ALL {
        assert!(p99.get(path).unwrap().median >= med.get(path).unwrap().median);
    }
    assert!(report.added_latency.is_some());
    let large = report.large_table.expect("large-table figures");
    assert_eq!(large.routes, bench::LARGE_TABLE_ROUTES);
    assert!(large.vm_hwm_mib >= large.vm_rss_mib && large.vm_rss_mib > 0.0);

    // The JSON has every figure with samples and units, and the machine.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let figures = json["figures"].as_array().unwrap();
    assert_eq!(figures.len(), Metric::ALL.len());
    let tcp = &figures[0];
    assert_eq!(tcp["metric"], "tcp_one_stream");
    assert_eq!(tcp["unit"], "Gbit/s");
    assert!(tcp["tunl"]["samples"][0].as_f64().unwrap() > 0.0);
    assert!(tcp["vxlan"]["median"].as_f64().unwrap() > 0.0);
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!json["machine"]["cpu_model"].as_str().unwrap().is_empty());
    assert!(json["machine"]["kernel"].as_str().unwrap().contains('.'));
    assert!(json["large_table"]["vm_rss_mib"].as_f64().unwrap() > 0.0);

    // The SVG exists and is a complete document with a panel per chart figure.
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<g class=\"panel\">").count(),
        Metric::CHART.len()
    );

    // Nothing of the run is left behind.
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("tunl-{}x", std::process::id())))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_flood_row_counts_refused_spoofs_and_the_pings_meanwhile() {
    let args = BenchArgs {
        seconds: 1,
        flood_only: true,
        ..BenchArgs::default()
    };
    let report = bench::run(&args, Path::new(env!("CARGO_BIN_EXE_tunl"))).expect("tunl bench");
    let f = report.flood.expect("--flood-only measures the flood");
    assert_eq!(f.workers, 1);
    assert!(f.sent > 0 && f.refused > 0, "{f:?}");
    // Refused packets are ones the flooder sent; nothing of it delivered
    // but the pings.
    assert!(f.refused <= f.sent, "{f:?}");
    assert!(f.ping_sent > 0, "{f:?}");
    assert!(f.delivered <= u64::from(f.ping_sent), "{f:?}");
    assert!(
        report.large_table.is_none(),
        "--flood-only skips the large table"
    );
    assert!(
        report.figures.iter().all(|fig| fig.tunl.is_none()),
        "--flood-only skips the paths"
    );
}
