//! tunl under systemd, without systemd: both example units pass
//! `systemd-analyze verify` (which needs no running systemd, only the
//! binaries the units name), and the daemon reports readiness (`READY=1`
//! on `$NOTIFY_SOCKET`) once its routes are in, also when started the way
//! tunl-nonroot.service starts it (an unprivileged user with two ambient
//! capabilities). The daemons run in network namespaces (root, as under
//! CI; they do not skip).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{logs, tunl_bin};
use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::ClusterSpec;

const NODE1: &str = "node1.sit";
const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fresh folder for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tunl-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `systemd-analyze verify --man=no` on `units` (paths); fails the test if
/// systemd-analyze is missing.
fn verify(units: &[PathBuf]) -> Output {
    Command::new("systemd-analyze")
        .arg("verify")
        // The units name man:tunl(1), which the .deb installs; a checkout
        // has no man page to look up.
        .arg("--man=no")
        .args(units)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze: {e}; run scripts/setup.sh (Debian package systemd)")
        })
}

/// The example unit `name` with its `/usr/local/bin/tunl` replaced by the
/// binary under test (verify checks that ExecStart= names an executable),
/// written into `dir`.
fn unit_copy(dir: &Path, name: &str) -> (PathBuf, String) {
    let text = std::fs::read_to_string(workspace().join("examples").join(name)).unwrap();
    assert!(text.contains("/usr/local/bin/tunl run"), "{name}: {text}");
    let text = text.replace("/usr/local/bin/tunl", tunl_bin().to_str().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// The value of every `key=` line of a unit's text.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn both_units_pass_systemd_analyze_verify() {
    let dir = TempDir::new("units");
    let (root, root_text) = unit_copy(&dir.0, "tunl.service");
    let (nonroot, nonroot_text) = unit_copy(&dir.0, "tunl-nonroot.service");
    let o = verify(&[root.clone(), nonroot.clone()]);
    // verify exits 0 after an unknown key or a bad value, but says so.
    assert!(
        o.status.success() && text(&o).trim().is_empty(),
        "systemd-analyze verify: {}\n{}",
        o.status,
        text(&o)
    );
    for unit in [&root_text, &nonroot_text] {
        assert_eq!(directive(unit, "Type"), ["notify"]);
        assert_eq!(directive(unit, "RestartPreventExitStatus"), ["2"]);
        assert!(directive(unit, "ExecStartPre").is_empty(), "{unit}");
    }
    // The root unit: no user switch possible, so none in its bounding set.
    assert_eq!(directive(&root_text, "User"), ["root"]);
    let bounding = directive(&root_text, "CapabilityBoundingSet").join(" ");
    assert!(!bounding.contains("CAP_SETUID"), "{bounding}");
    assert!(!bounding.contains("CAP_SETGID"), "{bounding}");
    // The unprivileged unit: its user, two capabilities and nothing else.
    assert_eq!(directive(&nonroot_text, "User"), ["tunl"]);
    assert_eq!(
        directive(&nonroot_text, "AmbientCapabilities"),
        ["CAP_NET_ADMIN CAP_NET_RAW"]
    );
    assert_eq!(
        directive(&nonroot_text, "CapabilityBoundingSet"),
        ["CAP_NET_ADMIN CAP_NET_RAW"]
    );

    // The check can fail: a misspelt value is reported.
    let bad = dir.0.join("bad.service");
    std::fs::write(&bad, root_text.replace("Type=notify", "Type=notfy")).unwrap();
    let o = verify(&[bad]);
    assert!(text(&o).contains("notfy"), "{}", text(&o));
}

/// A datagram socket standing in for systemd's notification socket, that
/// any user may send to.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (socket, path)
}

/// The next notification, waiting up to 20 s; fails with the logs if the
/// daemon (`pid`) exits first.
fn receive(socket: &UnixDatagram, tc: &TunlCluster, pid: u32, log: &Path) -> String {
    let failed = |what: String| -> ! {
        panic!(
            "{what}\n{}\n--- daemon:\n{}",
            logs(tc),
            std::fs::read_to_string(log).unwrap_or_default()
        )
    };
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        match socket.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => failed(format!("receiving a notification: {e}")),
        }
        if let Ok(Some(status)) = tc.cluster().try_wait(pid) {
            failed(format!("the daemon exited ({status}) before notifying"));
        }
    }
    failed("no notification in 20 s".to_owned())
}

/// Stops the testbed's daemon on node1 and starts `prefix... tunl run` there
/// with `NOTIFY_SOCKET` set and `config`; waits for the first notification
/// and checks that the routes were in when it arrived and that the tunnel
/// carries traffic; then stops the daemon and checks the last one.
fn readiness_after_routes(tc: &TunlCluster, dir: &Path, prefix: &[&str], config: &Path) {
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty());
    let expected = tc.cluster().remote_routes(NODE1).len();
    assert!(expected > 0);
    let (socket, path) = notify_socket(dir);
    let log = dir.join("daemon.log");
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([
        tunl_bin().to_str().unwrap(),
        "run",
        "--config",
        config.to_str().unwrap(),
    ]);
    let mut cmd = tc.cluster().command(NODE1, argv[0]).unwrap();
    cmd.args(&argv[1..])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    let pid = tc.cluster().adopt(cmd.spawn().unwrap());

    let ready = receive(&socket, tc, pid, &log);
    // Read the kernel's routes at once: READY=1 must not come before them.
    let routes = tc.kernel_routes(NODE1).unwrap();
    assert_eq!(
        routes.len(),
        expected,
        "routes when READY=1 arrived: {routes:?}\n{ready}"
    );
    let mut lines = ready.lines();
    assert_eq!(lines.next(), Some("READY=1"), "{ready}");
    assert_eq!(
        lines.next(),
        Some(format!("STATUS=routing {expected} routes on tunl0").as_str()),
        "{ready}"
    );
    // The tunnel carries traffic.
    let r = tc
        .cluster()
        .wait_reachable(SIT, tc.pod_ip(PERF).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(tc)));
    assert_eq!(r.ttls.last(), Some(&62));

    let exit = tc.cluster().terminate(pid).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("STOPPING=1 before the daemon exited");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS="),
        "{stopping}\n{exit:?}"
    );
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "{exit:?}\n{err}");
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty(), "{err}");
}

fn cluster() -> TunlCluster {
    TunlCluster::start(ClusterSpec::seed(), tunl_bin(), DaemonOptions::default())
        .expect("start a cluster with tunl on every node")
}

#[test]
#[ignore = "needs root: scripts/test"]
fn ready_is_sent_once_the_routes_are_in() {
    let tc = cluster();
    let dir = TempDir::new("notify-root");
    let config = tc.daemon(NODE1).unwrap().config.clone();
    readiness_after_routes(&tc, &dir.0, &[], &config);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_nonroot_units_mode_works_and_reports_readiness() {
    // As tunl-nonroot.service starts it: another user than root, CAP_NET_ADMIN
    // and CAP_NET_RAW ambient, nothing else in the bounding set,
    // no_new_privs. `nobody` stands in for the tunl user.
    let tc = cluster();
    let dir = TempDir::new("notify-nonroot");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Its control socket in a folder it may write to, as RuntimeDirectory=.
    let config_text = tc.config_text(NODE1).unwrap();
    let socket = tc.control_socket(NODE1);
    let own_socket = dir.0.join("control.sock");
    assert!(config_text.contains(socket.to_str().unwrap()));
    let config = dir.0.join("nonroot.toml");
    std::fs::write(
        &config,
        config_text.replace(socket.to_str().unwrap(), own_socket.to_str().unwrap()),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // This container's /dev/net/tun is 0600 root; udev makes it 0666 on a
    // host (systemd's 50-udev-default.rules), which the unit relies on. The
    // daemon gets a 0666 node of the same device over /dev/net/tun in a
    // mount namespace of its own.
    let dev = dir.0.join("dev");
    std::fs::create_dir(&dev).unwrap();
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata("/dev/net/tun").unwrap());
    let (major, minor) = (libc::major(rdev).to_string(), libc::minor(rdev).to_string());
    let script = format!(
        "mount -t tmpfs -o mode=0755 tunl-test-dev {d} && mknod -m 0666 {d}/tun c {major} {minor} \
         && mount --bind {d}/tun /dev/net/tun && exec \"$@\"",
        d = dev.display()
    );
    readiness_after_routes(
        &tc,
        &dir.0,
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+net_admin,+net_raw",
            "--ambient-caps=+net_admin,+net_raw",
            "--bounding-set=-all,+net_admin,+net_raw",
            "--no-new-privs",
        ],
        &config,
    );
}
