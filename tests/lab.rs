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
