//! The lab's code path end to end (as `tunl lab` runs it), under CI as root.

use std::path::Path;

use tunl_lab::lab::{self, LabArgs};

#[test]
#[ignore = "needs root: scripts/test"]
fn lab_walks_through_the_article() {
    let args = LabArgs {
        seconds: 1,
        tag: format!("labtest{}", std::process::id() % 10000),
        ..LabArgs::default()
    };
    let mut out = Vec::new();
    let result = lab::run(&args, Path::new(env!("CARGO_BIN_EXE_tunl")), &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let report = result.unwrap_or_else(|e| panic!("{e}\n{text}"));

    // The routing tables: the remote block via the other node on tunl0.
    assert!(
        text.contains("10.20.105.192/26 via 172.16.36.5 dev tunl0"),
        "{text}"
    );
    assert!(
        text.contains("10.20.42.0/26 via 172.16.35.4 dev tunl0"),
        "{text}"
    );
    // The ping, as ping prints it.
    assert!(!report.ping_ttls.is_empty());
    assert!(report.ping_ttls.iter().all(|t| *t == 62), "{text}");
    assert!(text.contains("ttl=62"), "{text}");
    // The capture: both IP layers, outer node to node, inner pod to pod.
    let pod_to_pod = report.captured.iter().filter(|p| {
        let inner = p.inner.as_ref().unwrap();
        p.outer.src.to_string() == "172.16.36.5"
            && p.outer.dst.to_string() == "172.16.35.4"
            && inner.src.to_string() == "10.20.105.215"
            && inner.dst.to_string() == "10.20.42.31"
            && p.payload.starts_with("ICMP echo request")
    });
    assert!(pod_to_pod.count() >= 1, "{text}");
    let pcap = report.pcap.expect("a pcap file");
    assert!(text.contains(&pcap.display().to_string()));
    // The file outlives the teardown, and reads back as the same capture.
    let reread =
        tunl_lab::capture::read_pcap(&pcap).expect("the pcap file is readable after teardown");
    assert!(reread.iter().filter(|p| p.is_ipip()).count() >= report.captured.len());
    let _ = std::fs::remove_file(&pcap);
    assert!(report.throughput.unwrap_or(0.0) > 0.0, "{text}");
    assert!(
        text.contains("counters at exit") || text.contains("tx_packets="),
        "{text}"
    );
    assert!(text.contains("All lab namespaces removed"), "{text}");
    assert!(
        tunl_lab::topology::tagged_namespaces(&args.tag)
            .unwrap()
            .is_empty()
    );
}

#[test]
#[ignore = "needs root: scripts/test"]
fn lab_all_to_all_on_a_generated_cluster() {
    let args = LabArgs {
        nodes: Some(3),
        pods_per_node: Some(2),
        tag: format!("labgen{}", std::process::id() % 10000),
        ..LabArgs::default()
    };
    let mut out = Vec::new();
    let result = lab::run(&args, Path::new(env!("CARGO_BIN_EXE_tunl")), &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let report = result.unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(report.matrix, Some((30, 30)), "{text}");
}

#[test]
fn lab_keep_prints_each_daemons_socket_and_a_ready_status_line() {
    let args = LabArgs {
        keep: true,
        nodes: Some(2),
        tag: format!("labkeep{}", std::process::id() % 10000),
        ..LabArgs::default()
    };
    let mut out = Vec::new();
    let result = lab::run(&args, Path::new(env!("CARGO_BIN_EXE_tunl")), &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    // Down first, whatever happened, so nothing is left behind.
    let mut down = Vec::new();
    let status_lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("status:"))
        .map(|l| l.trim().to_owned())
        .collect();
    let ran: Vec<std::process::Output> = status_lines
        .iter()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            std::process::Command::new(words[0])
                .args(&words[1..])
                .output()
                .unwrap()
        })
        .collect();
    // The teardown line as printed (`--tag` goes before `down`).
    let down_line = text
        .lines()
        .find_map(|l| l.strip_prefix("Tear it down:"))
        .map(|l| l.trim().to_owned());
    let torn_down = down_line.as_ref().map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        std::process::Command::new(words[0])
            .args(&words[1..])
            .output()
            .unwrap()
    });
    lab::down(&args.tag, &mut down).unwrap();
    result.unwrap_or_else(|e| panic!("{e}\n{text}"));
    let torn_down = torn_down.unwrap_or_else(|| panic!("no teardown line in {text}"));
    assert!(
        torn_down.status.success(),
        "{down_line:?}: {}",
        String::from_utf8_lossy(&torn_down.stderr)
    );
    assert!(
        String::from_utf8_lossy(&torn_down.stdout).contains("Removed 4 namespace(s)"),
        "{down_line:?}"
    );
    assert_eq!(text.matches("  control socket: ").count(), 2, "{text}");
    assert_eq!(status_lines.len(), 2, "{text}");
    for (line, o) in status_lines.iter().zip(&ran) {
        assert!(
            line.starts_with(&format!("{} status --socket ", env!("CARGO_BIN_EXE_tunl"))),
            "{line}"
        );
        assert!(
            o.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with("device: tunl0\n"),
            "{line}"
        );
    }
    assert!(
        tunl_lab::topology::tagged_namespaces(&args.tag)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_help_and_the_readme_agree_on_the_default_pcap() {
    let default = lab::default_pcap(lab::LAB_TAG);
    if std::env::var_os("TMPDIR").is_none() {
        assert_eq!(default, Path::new("/tmp/tunl-lab-node1-underlay.pcap"));
    }
    let readme = include_str!("../README.md");
    assert!(readme.contains("/tmp/tunl-lab-node1-underlay.pcap"));
    let mut cmd = <LabArgs as clap::Args>::augment_args(clap::Command::new("lab"));
    let help = cmd.render_long_help().to_string();
    assert!(help.contains("/tmp/tunl-lab-node1-underlay.pcap"), "{help}");
}
