//! The Debian package: `scripts/deb` builds it (cargo-deb) and every file an
//! operator expects is in it, in its place: the binary, both systemd units
//! (pointed at it, and valid for `systemd-analyze verify`), the config as a
//! conffile, the man page, the shell completions, the docs, and the
//! maintainer scripts that create the `tunl` user.
//!
//! The package is built around the binary under test, copied to where
//! cargo-deb looks for a release build (`CARGO_TARGET_DIR/release/tunl` in a
//! scratch folder): the layout is what is tested, and a second, optimised
//! build of the workspace inside the test run would only cost minutes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::tunl_bin;

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

fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}; run scripts/setup.sh"));
    assert!(o.status.success(), "{what}: {}\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `dpkg-deb -c` lists: `(mode, path)` with the leading `.` dropped.
fn contents(deb: &Path) -> Vec<(String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb), "dpkg-deb -c")
        .lines()
        .map(|l| {
            let mode = l.split_whitespace().next().unwrap().to_owned();
            let path = l.split_whitespace().nth(5).unwrap();
            (mode, path.trim_start_matches('.').to_owned())
        })
        .collect()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_deb_holds_binary_units_conffile_man_page_and_completions() {
    let scratch = Scratch(std::env::temp_dir().join(format!("tunl-deb-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let target = scratch.0.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(tunl_bin(), target.join("release/tunl")).unwrap();

    let out = run(
        Command::new(workspace().join("scripts/deb"))
            .args(["--no-build", "--fast"])
            .env("CARGO_TARGET_DIR", &target),
        "scripts/deb",
    );
    let deb = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(
        deb.starts_with(target.join("debian")) && deb.extension().is_some_and(|e| e == "deb"),
        "scripts/deb prints the package's path last: {out}"
    );
    let field = |name: &str| {
        run(
            Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name),
            "dpkg-deb -f",
        )
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "tunl");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));

    let listed = contents(&deb);
    let paths: BTreeSet<&str> = listed.iter().map(|(_, p)| p.as_str()).collect();
    for expected in [
        "/usr/bin/tunl",
        "/usr/lib/systemd/system/tunl.service",
        "/usr/lib/systemd/system/tunl-nonroot.service",
        "/usr/lib/sysusers.d/tunl.conf",
        "/etc/tunl/tunl.toml",
        "/usr/share/man/man1/tunl.1.gz",
        "/usr/share/bash-completion/completions/tunl",
        "/usr/share/zsh/vendor-completions/_tunl",
        "/usr/share/fish/vendor_completions.d/tunl.fish",
        "/usr/share/doc/tunl/copyright",
        "/usr/share/doc/tunl/README.md",
        "/usr/share/doc/tunl/operating.md",
        "/usr/share/doc/tunl/calico.md",
        "/usr/share/doc/tunl/examples/grafana-dashboard.json",
    ] {
        assert!(paths.contains(expected), "no {expected} in {paths:#?}");
    }
    let mode = |path: &str| &listed.iter().find(|(_, p)| p == path).unwrap().0;
    assert_eq!(mode("/usr/bin/tunl"), "-rwxr-xr-x");
    assert_eq!(mode("/etc/tunl/tunl.toml"), "-rw-r--r--");

    // The control files: the conffile, and the user created at install.
    let control = scratch.0.join("control");
    run(
        Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control),
        "dpkg-deb -e",
    );
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    assert_eq!(
        read(control.join("conffiles")).trim(),
        "/etc/tunl/tunl.toml"
    );
    let postinst = read(control.join("postinst"));
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    assert!(postinst.contains("tunl-nonroot.service"), "{postinst}");
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "no unit starts before its config is edited:\n{postinst}"
    );
    let prerm = read(control.join("prerm"));
    assert!(prerm.contains("stop tunl.service"), "{prerm}");

    // The files themselves.
    let root = scratch.0.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    );
    assert_eq!(
        read(root.join("etc/tunl/tunl.toml")),
        read(workspace().join("examples/tunl.toml"))
    );
    let man = run(
        Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man1/tunl.1.gz")),
        "gzip -dc",
    );
    assert!(man.contains(".TH"), "a roff man page: {man}");
    let bash = read(root.join("usr/share/bash-completion/completions/tunl"));
    assert!(bash.contains("tunl"), "{bash}");
    let sysusers = read(root.join("usr/lib/sysusers.d/tunl.conf"));
    assert!(
        sysusers.lines().any(|l| l.starts_with("u tunl ")),
        "{sysusers}"
    );
    // The packaged units run the packaged binary, and systemd-analyze
    // accepts them (pointed at the extracted copy, which verify checks).
    let units = scratch.0.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let binary = root.join("usr/bin/tunl");
    let mut copies = Vec::new();
    for unit in ["tunl.service", "tunl-nonroot.service"] {
        let packaged = read(root.join("usr/lib/systemd/system").join(unit));
        assert!(
            packaged.contains("\nExecStart=/usr/bin/tunl run --config /etc/tunl/tunl.toml\n"),
            "{unit}: {packaged}"
        );
        assert!(!packaged.contains("/usr/local/bin"), "{unit}: {packaged}");
        let copy = units.join(unit);
        std::fs::write(
            &copy,
            packaged.replace("/usr/bin/tunl", binary.to_str().unwrap()),
        )
        .unwrap();
        copies.push(copy);
    }
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .expect("systemd-analyze (Debian package systemd): run scripts/setup.sh");
    assert!(
        o.status.success() && text(&o).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&o)
    );
}
