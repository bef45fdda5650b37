//! End-to-end tests of the `tunl` binary that need no daemon and no
//! namespace: `tunl check`, the log filter, `--version`, completions and
//! the man page, usage errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tunl_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tunl"))
}

/// Runs `tunl ARGS` with `stdin` as its input (and no RUST_LOG).
fn tunl_with_input(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(tunl_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that does not read its input (it failed first, or takes
    // its config from a file) may exit before the write: EPIPE is then no
    // failure of the test, the command's output says what happened.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn tunl(args: &[&str]) -> Output {
    tunl_with_input(args, "")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A folder of its own for a test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("tunl-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const GOOD: &str = "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = 1480\nblocks = [\"10.20.42.0/26\"]\n\
                    [[route]]\nprefix = \"10.20.105.192/26\"\nvia = \"172.16.36.5\"\n";

#[test]
fn check_takes_a_file_an_option_or_stdin() {
    let dir = Dir::new("check");
    let good = dir.file("good.toml", GOOD);
    for args in [
        vec!["check", good.as_str()],
        vec!["check", "--config", good.as_str()],
    ] {
        let o = tunl(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(
            stdout(&o).starts_with(&format!(
                "{good}: ok: device tunl0, local 172.16.35.4, 1 route(s)"
            )),
            "{}",
            stdout(&o)
        );
        assert!(stdout(&o).contains("10.20.105.192/26 via 172.16.36.5 dev tunl0 onlink"));
    }
    let o = tunl_with_input(&["check", "-"], GOOD);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("<stdin>: ok:"), "{}", stdout(&o));
    let o = tunl_with_input(&["check", "--config", "-"], "[tunnel]\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("config <stdin>: tunnel.local: required"),
        "{}",
        stderr(&o)
    );
    // Both at once is a usage error.
    let o = tunl(&["check", good.as_str(), "--config", good.as_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn check_and_run_default_to_etc_tunl() {
    let o = tunl(&["check"]);
    let all = stdout(&o) + &stderr(&o);
    assert!(all.contains("/etc/tunl/tunl.toml"), "{all}");
    if !Path::new("/etc/tunl/tunl.toml").exists() {
        assert_eq!(o.status.code(), Some(2), "{all}");
        assert!(
            all.contains("cannot read config /etc/tunl/tunl.toml"),
            "{all}"
        );
    }
    // `run` is not started here: with a config installed on this host it
    // would set up a tunnel. Its help shows the default.
    let help = stdout(&tunl(&["run", "--help"]));
    assert!(help.contains("[default: /etc/tunl/tunl.toml]"), "{help}");
    // The daemon re-reads its file on SIGHUP: no stdin for `run`.
    let o = tunl_with_input(&["run", "--config", "-"], GOOD);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("needs a file"), "{}", stderr(&o));
}

#[test]
fn check_reports_every_problem_a_line_each() {
    let dir = Dir::new("problems");
    let bad = dir.file(
        "bad.toml",
        "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = \"abc\"\n\
         [[route]]\nprefix = \"10.20.105.192\"\nvia = \"172.16.36.5\"\n\
         [[route]]\nprefix = \"0.0.0.0/0\"\nvia = \"172.16.36.6\"\n\
         [security]\nuser = \"tunl-no-such-user\"\n",
    );
    let o = tunl(&["check", bad.as_str()]);
    assert_eq!(o.status.code(), Some(2));
    let lines: Vec<String> = stderr(&o).lines().map(str::to_owned).collect();
    let prefix = format!("tunl: config {bad}: ");
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with(&prefix)), "{lines:#?}");
    assert_eq!(
        lines[0],
        format!("{prefix}tunnel.mtu: expected a number 68..=65515, found \"abc\"")
    );
    assert!(lines[1].contains("route[0].prefix: \"10.20.105.192\" has no prefix length"));
    assert!(lines[2].contains("route[1].prefix: 0.0.0.0/0 would be a default route"));
    assert_eq!(lines[3], format!("{prefix}3 errors"));
    // Once the file is valid, the host: a user that does not exist.
    let no_user = dir.file(
        "user.toml",
        &format!("{GOOD}[security]\nuser = \"tunl-no-such-user\"\n"),
    );
    let o = tunl(&["check", no_user.as_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("security.user: no user \"tunl-no-such-user\""),
        "{}",
        stderr(&o)
    );
    // A syntax error is one line, with its place.
    let o = tunl_with_input(&["check", "-"], "[tunnel]\nlocal = = 1\n");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("tunl: config <stdin>: line 2, column 9: not TOML:"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_json() {
    let o = tunl_with_input(&["check", "-", "--json"], GOOD);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["device"], "tunl0");
    assert_eq!(v["mtu"], 1480);
    assert_eq!(v["blocks"][0], "10.20.42.0/26");
    assert_eq!(v["routes"][0]["via"], "172.16.36.5");
    let o = tunl_with_input(
        &["check", "--json", "-"],
        "[tunnel]\nlocal = \"x\"\nbogus = 1\n",
    );
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["tunnel.local", "tunnel.bogus"]);
    let o = tunl_with_input(&["check", "--json", "-"], "[tunnel\n");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"][0]["key"], serde_json::Value::Null);
}

#[test]
fn a_prefix_without_its_length_is_a_usage_error() {
    let o = tunl(&["route", "add", "10.20.105.192", "via", "172.16.36.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has no prefix length"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_invalid_log_filter_exits_2_and_says_why() {
    let dir = Dir::new("log");
    let good = dir.file("good.toml", GOOD);
    for filter in ["verbose", "debugg", "info,verbose", "tunl=debugg"] {
        let o = tunl(&["--log", filter, "check", good.as_str()]);
        assert_eq!(o.status.code(), Some(2), "{filter}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with(&format!("tunl: --log {filter:?}: ")),
            "{filter}: {}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty(), "nothing ran: {}", stdout(&o));
    }
    let o = Command::new(tunl_bin())
        .args(["check", good.as_str()])
        .env("RUST_LOG", "verbose")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("tunl: RUST_LOG \"verbose\": \"verbose\" is neither a level"),
        "{}",
        stderr(&o)
    );
    for filter in ["debug", "tunl=debug,warn", "tunl::daemon", "mio=trace"] {
        let o = tunl(&["--log", filter, "check", good.as_str()]);
        assert!(o.status.success(), "{filter}: {}", stderr(&o));
    }
    let help = stdout(&tunl(&["--help"]));
    assert!(help.contains("Any other bare word is refused"), "{help}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let o = tunl_with_input(
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            "/nonexistent/tunl.toml",
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let first = err.lines().next().unwrap();
    let event: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(event["level"], "ERROR");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("cannot read config /nonexistent/tunl.toml"),
        "{event}"
    );
    let o = tunl(&["--log-format", "xml", "check", "-"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn version_names_the_git_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    for args in [&["--version"][..], &["version"]] {
        let o = tunl(args);
        assert!(o.status.success(), "{args:?}");
        let text = stdout(&o);
        assert!(
            text.starts_with(&format!("tunl {} (commit ", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        if let Some(commit) = &commit {
            // Built from this checkout (cargo runs build.rs again when HEAD moves).
            assert!(text.contains(&format!("(commit {commit})")), "{text}");
        }
    }
    let o = tunl(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(!v["commit"].as_str().unwrap().is_empty());
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    for (shell, marker) in [
        ("bash", "_tunl()"),
        ("zsh", "#compdef tunl"),
        ("fish", "complete -c tunl"),
    ] {
        let o = tunl(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("allow-empty"), "{shell}");
    }
    let o = tunl(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH tunl 1"), "{page}");
    assert!(page.contains("completions"), "{page}");
    let dir = Dir::new("man");
    let o = tunl(&["man", "--dir", dir.0.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for page in [
        "tunl.1",
        "tunl-run.1",
        "tunl-check.1",
        "tunl-route-replace.1",
        "tunl-status.1",
    ] {
        let text = std::fs::read_to_string(dir.0.join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    assert!(!dir.0.join("tunl-man.1").exists(), "`man` is hidden");
    let help = stdout(&tunl(&["--help"]));
    assert!(
        help.contains("completions") && !help.contains("\n  man "),
        "{help}"
    );
}
