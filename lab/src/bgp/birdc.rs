//! Talking to a running BIRD: its control socket (what `birdc -s SOCKET
//! CMD` does), and the parser of `show protocols`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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

/// How long BIRD may take to answer a command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a command on a running BIRD, as `birdc -s SOCKET ARGS...` does,
/// over its control socket directly (no birdc process, so a block move's
/// announcement and withdrawal go out a few hundred microseconds apart).
/// Returns the reply as birdc prints it; fails when the socket does not
/// answer or BIRD replies with an error (codes 8xxx and 9xxx).
pub fn birdc(socket: &Path, args: &[&str]) -> Result<String, TopologyError> {
    let command = args.join(" ");
    let io_err = |source: std::io::Error| TopologyError::Io {
        context: format!("BIRD at {}: {command}", socket.display()),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(io_err)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(io_err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io_err)?);
    let mut writer = stream;
    // The banner: "0001 BIRD 2.0.12 ready."
    let mut banner = String::new();
    reader.read_line(&mut banner).map_err(io_err)?;
    writer
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io_err)?;
    let mut reply = Reply::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io_err)? == 0 {
            return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if reply.push(line.trim_end_matches('\n')) {
            break;
        }
    }
    if reply.error {
        return Err(io_err(std::io::Error::other(format!(
            "refused: {}",
            reply.text.trim()
        ))));
    }
    Ok(reply.text)
}

/// A reply of BIRD's control protocol being read: lines `NNNN-text`
/// (more follow), `NNNN text` (the last), or ` text` (continuing the
/// previous code).
#[derive(Debug, Default)]
struct Reply {
    text: String,
    error: bool,
}

impl Reply {
    /// Adds a line; true when it was the last one.
    fn push(&mut self, line: &str) -> bool {
        let bytes = line.as_bytes();
        let coded = bytes.len() >= 5
            && bytes[..4].iter().all(u8::is_ascii_digit)
            && matches!(bytes[4], b'-' | b' ');
        let (content, last) = if coded {
            if matches!(bytes[0], b'8' | b'9') {
                self.error = true;
            }
            (&line[5..], bytes[4] == b' ')
        } else {
            (line.strip_prefix(' ').unwrap_or(line), false)
        };
        // The closing "0000 " carries no text.
        if !(last && content.is_empty()) {
            self.text.push_str(content);
            self.text.push('\n');
        }
        last
    }
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
    fn reads_replies_of_the_control_protocol() {
        let mut r = Reply::default();
        assert!(!r.push("2002-Name       Proto      Table      State  Since         Info"));
        assert!(!r.push("1002-rr1        BGP        ---        up     00:10:28.561  Established"));
        assert!(!r.push(" continued"));
        assert!(r.push("0000 "));
        assert!(!r.error);
        assert_eq!(
            r.text,
            "Name       Proto      Table      State  Since         Info\n\
             rr1        BGP        ---        up     00:10:28.561  Established\ncontinued\n"
        );
        assert_eq!(parse_protocols(&r.text).len(), 1);
        let mut e = Reply::default();
        assert!(e.push("9001 syntax error, unexpected CF_SYM_UNDEFINED"));
        assert!(e.error);
        let mut ok = Reply::default();
        assert!(!ok.push("0011-moved: enabled"));
        assert!(ok.push("0000 "));
        assert_eq!(ok.text, "moved: enabled\n");
    }

    #[test]
    fn no_table_no_rows() {
        assert!(parse_protocols("Unable to connect to server control socket").is_empty());
        assert!(parse_protocols("").is_empty());
    }
}
