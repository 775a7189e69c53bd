//! Clients that misbehave on purpose, over a bare TCP socket, since an HTTP
//! client will not: a request head left unfinished, a body that trickles
//! in, a connection left idle after its answer, and an execute abandoned
//! as soon as it is sent.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, sleep, timeout},
};

/// The most bytes of an answer read; the service's answers are far smaller.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawAnswer {
    /// Its status.
    pub(super) status: u16,
    /// Its body.
    pub(super) body: Vec<u8>,
}

/// What came back on a connection.
#[derive(Debug)]
pub(super) enum Heard {
    /// An answer.
    Answer(RawAnswer),
    /// The server closed the connection without answering, after this long.
    Closed(Duration),
    /// Nothing, and the connection still open, when the client gave up.
    Silence,
}

/// Opens a connection, sends `GET /health` up to the middle of its
/// headers, and waits up to `wait` for the server to close it.
///
/// # Errors
/// When the connection cannot be opened or written.
pub(super) async fn unfinished_head(addr: SocketAddr, wait: Duration) -> anyhow::Result<Heard> {
    let mut stream = connect(addr).await?;
    let started = Instant::now();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: soak\r\nAccept: applic")
        .await
        .context("cannot write the unfinished head")?;
    listen(&mut stream, started, wait).await
}

/// Opens a connection, sends one `GET /health` and reads its answer, then
/// waits up to `wait` for the server to close the idle connection.
///
/// # Errors
/// When the connection cannot be opened or written, or the answer is not
/// 200.
pub(super) async fn idle_after_answer(addr: SocketAddr, wait: Duration) -> anyhow::Result<Heard> {
    let mut stream = connect(addr).await?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: soak\r\n\r\n")
        .await
        .context("cannot write the request")?;
    let mut buffer = Vec::new();
    let answer = timeout(wait, read_answer(&mut stream, &mut buffer))
        .await
        .context("no answer to GET /health")??;
    if answer.status != 200 {
        bail!("GET /health answered {}", answer.status);
    }
    let idle_from = Instant::now();
    listen(&mut stream, idle_from, wait).await
}

/// Sends `POST path` with `headers` and `body`, the body `chunk` bytes at a
/// time every `every`, and reads the answer, waiting at most `wait` in all.
///
/// # Errors
/// When the connection cannot be opened or the head written.
pub(super) async fn trickled_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunk: usize,
    every: Duration,
    wait: Duration,
) -> anyhow::Result<Heard> {
    let stream = connect(addr).await?;
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(head("POST", path, headers, body.len()).as_bytes())
        .await
        .context("cannot write the head")?;
    let body = body.to_vec();
    let chunk = chunk.max(1);
    let trickle = tokio::spawn(async move {
        for piece in body.chunks(chunk) {
            sleep(every).await;
            // The server may answer (408) and close before the body ends.
            if writer.write_all(piece).await.is_err() {
                return writer;
            }
        }
        writer
    });
    let heard = listen(&mut reader, started, wait).await;
    // The writer half, once the trickle is over, holds the connection
    // open; dropping the task's result closes it.
    trickle.abort();
    heard
}

/// Sends `POST path` with `headers` and `body` whole, then closes the
/// connection without reading anything, after `linger`: a client that gave
/// up on its answer.
///
/// # Errors
/// When the connection cannot be opened or the request written.
pub(super) async fn abandoned_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    linger: Duration,
) -> anyhow::Result<()> {
    let mut stream = connect(addr).await?;
    let mut request = head("POST", path, headers, body.len()).into_bytes();
    request.extend_from_slice(body);
    stream
        .write_all(&request)
        .await
        .context("cannot write the request")?;
    sleep(linger).await;
    Ok(())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    Ok(stream)
}

/// A request head with `Content-Length: length`.
fn head(method: &str, path: &str, headers: &[(&str, &str)], length: usize) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: soak\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    head
}

/// Waits up to `wait` from `since` for an answer or for the server to close
/// the connection.
async fn listen(
    stream: &mut (impl AsyncRead + Unpin),
    since: Instant,
    wait: Duration,
) -> anyhow::Result<Heard> {
    let mut buffer = Vec::new();
    match tokio::time::timeout_at(since + wait, read_answer(stream, &mut buffer)).await {
        Err(_) => Ok(Heard::Silence),
        Ok(Ok(answer)) => Ok(Heard::Answer(answer)),
        // Closed or reset before a single byte of an answer.
        Ok(Err(_)) if buffer.is_empty() => Ok(Heard::Closed(since.elapsed())),
        Ok(Err(err)) => Err(err),
    }
}

/// Reads one answer with a `Content-Length` body (the service's are), into
/// `buffer` as it goes.
async fn read_answer(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> anyhow::Result<RawAnswer> {
    let mut piece = [0_u8; 8192];
    loop {
        if let Some(answer) = parse_answer(buffer)? {
            return Ok(answer);
        }
        if buffer.len() > MAX_ANSWER_BYTES {
            bail!("an answer over {MAX_ANSWER_BYTES} bytes");
        }
        let read = stream.read(&mut piece).await.context("cannot read")?;
        if read == 0 {
            bail!("the connection closed after {} bytes", buffer.len());
        }
        buffer.extend_from_slice(&piece[..read]);
    }
}

/// The answer `bytes` hold, once they hold a whole one.
fn parse_answer(bytes: &[u8]) -> anyhow::Result<Option<RawAnswer>> {
    let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&bytes[..end]).context("the head is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .context("no status line")?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .context("a Content-Length that is not a number")?
        .unwrap_or(0);
    let body = &bytes[end + 4..];
    if body.len() < length {
        return Ok(None);
    }
    Ok(Some(RawAnswer {
        status,
        body: body[..length].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_whole_once_its_content_length_has_arrived() {
        let whole = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(&whole[..20]).unwrap(), None);
        assert_eq!(parse_answer(&whole[..whole.len() - 1]).unwrap(), None);
        assert_eq!(
            parse_answer(whole).unwrap(),
            Some(RawAnswer {
                status: 408,
                body: b"{}".to_vec()
            })
        );
        let empty = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(parse_answer(empty).unwrap().map(|a| a.status), Some(200));
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn the_head_carries_the_headers_and_the_length() {
        assert_eq!(
            head("POST", "/x", &[("Authorization", "Bearer t")], 12),
            "POST /x HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer t\r\nContent-Length: 12\r\n\r\n"
        );
    }
}
