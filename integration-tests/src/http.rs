//! A minimal HTTP/1.1 GET, enough for `/ready`, `/health` and `/metrics`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path`; returns the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, decode_chunked(head, body)))
}

/// The sum of the samples on `/metrics` at `addr` whose line starts with `series` (a
/// metric name with its labels, as the exporter writes them) followed by the value; 0
/// when there are none.
pub async fn metric(addr: SocketAddr, series: &str) -> anyhow::Result<f64> {
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    body.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| {
            value
                .trim()
                .parse::<f64>()
                .map_err(|e| anyhow::anyhow!("{series} {value}: {e}"))
        })
        .sum()
}

/// Undoes `Transfer-Encoding: chunked` if the head says so.
fn decode_chunked(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
