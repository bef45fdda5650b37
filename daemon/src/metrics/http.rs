//! The endpoint's HTTP/1.1: one `GET /metrics` per connection, the head
//! bounded in size and time, the format picked from `Accept`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Format, MetricsSource};

/// The longest request head read.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` until the runtime stops.
pub async fn serve(listener: TcpListener, source: Arc<MetricsSource>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_one(stream, source.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
    Some(head)
}

/// What to answer a request head with: status, content type and body.
fn respond(head: &[u8], source: &MetricsSource) -> (&'static str, &'static str, String) {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) if path == "/metrics" || path.starts_with("/metrics?") => {
            let accept = lines
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
                .map(|(_, value)| value.trim());
            let format = Format::negotiate(accept);
            ("200 OK", format.content_type(), source.render(format))
        }
        (Some("GET"), _) => (
            "404 Not Found",
            "text/plain",
            "tunl serves /metrics only\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    }
}

async fn serve_one(mut stream: TcpStream, source: Arc<MetricsSource>) {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .ok()
        .flatten();
    let (status, ctype, body) = match head {
        None => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        Some(h) => respond(&h, &source),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::super::tests::source;
    use super::*;

    #[test]
    fn the_accept_header_picks_the_format() {
        let s = source();
        let (status, ctype, body) = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &s);
        assert_eq!((status, ctype), ("200 OK", Format::Text004.content_type()));
        assert!(
            body.contains("# TYPE tunl_tx_packets_total counter"),
            "{body}"
        );
        let (_, ctype, body) = respond(
            b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
            &s,
        );
        assert_eq!(ctype, Format::OpenMetrics.content_type());
        assert!(body.contains("# TYPE tunl_tx_packets counter"), "{body}");
        assert!(body.ends_with("# EOF\n"));
        // A body line that looks like a header is not read as one.
        let (_, ctype, _) = respond(
            b"GET /metrics HTTP/1.1\r\n\r\nAccept: application/openmetrics-text\r\n",
            &s,
        );
        assert_eq!(ctype, Format::Text004.content_type());
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &s).0, "404 Not Found");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &s).0,
            "405 Method Not Allowed"
        );
    }
}
