//! Reading a running BIRD: `birdc -s SOCKET CMD`, and the parser of `show
//! protocols`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::topology::TopologyError;

/// One row of `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// Protocol name, e.g. `rr1`.
    pub name: String,
    /// Its kind, e.g. `BGP`, `Kernel`, `Static`.
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// The rest of the row: for BGP the session state, e.g. `Established`.
    pub info: String,
}

impl Protocol {
    /// Whether this is a BGP session in state Established.
    pub fn is_established_bgp(&self) -> bool {
        self.proto == "BGP" && self.info.starts_with("Established")
    }
}

/// Parses the output of `birdc show protocols`: the rows after the
/// `Name Proto Table State Since Info` header.
pub fn parse_protocols(text: &str) -> Vec<Protocol> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"Name") && fields.get(1) == Some(&"Proto") {
            in_table = true;
            continue;
        }
        if !in_table || fields.len() < 5 {
            continue;
        }
        // Name Proto Table State Since(1 or 2 fields: time, or date and
        // time) Info...
        let since_len = if fields.get(5).is_some_and(|f| looks_like_time(f)) {
            2
        } else {
            1
        };
        rows.push(Protocol {
            name: fields[0].to_owned(),
            proto: fields[1].to_owned(),
            state: fields[3].to_owned(),
            info: fields.get(4 + since_len..).unwrap_or(&[]).join(" "),
        });
    }
    rows
}

fn looks_like_time(field: &str) -> bool {
    field.contains(':')
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || b":.".contains(&b))
}

/// Runs `birdc -s SOCKET ARGS...` and returns its output; fails when birdc
/// fails (BIRD not running, socket missing) or when BIRD answers with an
/// error.
pub fn birdc(socket: &Path, args: &[&str]) -> Result<String, TopologyError> {
    let mut cmd = Command::new("birdc");
    cmd.arg("-s").arg(socket).args(args).stdin(Stdio::null());
    let command = format!("birdc -s {} {}", socket.display(), args.join(" "));
    let out = cmd.output().map_err(|source| TopologyError::Spawn {
        command: command.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // birdc exits 0 even for some errors; BIRD's error replies are numbered
    // 8xxx/9xxx, shown after the banner as text without the number.
    if !out.status.success() || text.contains("Unable to connect") {
        return Err(TopologyError::Command {
            command,
            status: out.status,
            stderr: format!("{}{}", String::from_utf8_lossy(&out.stderr), text),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW_PROTOCOLS: &str = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     00:10:27.353  
blocks     Static     master4    up     00:10:27.353  
moved      Static     master4    down   00:10:27.353  
kernel1    Kernel     master4    up     00:10:27.353  
rr1        BGP        ---        up     00:10:28.561  Established   
rr2        BGP        ---        start  00:10:27.353  Active        Socket: Connection refused
node7      BGP        ---        start  2024-01-02 00:10:27  Connect
";

    #[test]
    fn parses_show_protocols() {
        let rows = parse_protocols(SHOW_PROTOCOLS);
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0].name, "device1");
        assert_eq!(rows[2].state, "down");
        assert_eq!(rows[4].proto, "BGP");
        assert!(rows[4].is_established_bgp());
        assert!(!rows[5].is_established_bgp());
        assert_eq!(rows[5].info, "Active Socket: Connection refused");
        assert_eq!(rows[6].info, "Connect");
        assert_eq!(rows.iter().filter(|r| r.is_established_bgp()).count(), 1);
    }

    #[test]
    fn no_table_no_rows() {
        assert!(parse_protocols("Unable to connect to server control socket").is_empty());
        assert!(parse_protocols("").is_empty());
    }
}
