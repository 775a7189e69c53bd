//! The xtask's one HTTP/1.1 client, over hyper: the load generator's
//! keep-alive connections, and single requests on a connection of their own
//! for readiness checks and the set-up calls to Airflow and Maestro.
//!
//! The load generator measures tens of thousands of requests per second, so
//! the client adds nothing per request beyond hyper itself: a request is
//! built from a [`RequestTemplate`] whose header values and body are
//! reference-counted, and a [`Connection`] is reused until the server
//! closes it.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    HeaderMap, Method, Request, StatusCode,
    client::conn::http1::{self, SendRequest},
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// The longest one request of the load generator may take before it counts
/// as a transport error. Generous: it only exists so that a server that
/// stops answering ends the run instead of hanging it.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// The TCP connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed: handshake, request, or reading the body.
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// No answer within the time allowed.
    #[error("no answer within {}s", .0.as_secs_f64())]
    Timeout(Duration),
}

/// One request, sent once or again and again: built once, cloned cheaply
/// (the header values and body are reference-counted).
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    /// The method, e.g. `POST`.
    pub(crate) method: Method,
    /// The path and query, e.g. `/platform/pipeline/execute`.
    pub(crate) path: String,
    /// Headers besides `Host` and `Content-Length`, which are added per
    /// connection and per body.
    pub(crate) headers: HeaderMap,
    /// The body; empty for none.
    pub(crate) body: Bytes,
}

impl RequestTemplate {
    /// `method path` with no headers and no body.
    pub(crate) fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `GET path`.
    pub(crate) fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// The same request with `Authorization: Bearer <token>`.
    ///
    /// # Errors
    /// When the token is not a valid header value.
    pub(crate) fn bearer(mut self, token: &str) -> anyhow::Result<Self> {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a header value")?;
        self.headers.insert(AUTHORIZATION, value);
        Ok(self)
    }

    /// The same request with `body` as its JSON body.
    ///
    /// # Errors
    /// When `body` cannot be written as JSON.
    pub(crate) fn json(mut self, body: &impl Serialize) -> anyhow::Result<Self> {
        self.body = Bytes::from(serde_json::to_vec(body).context("cannot write a JSON body")?);
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(self)
    }

    /// The request to send, with `extra`, when given, added as one more
    /// header.
    fn build(
        &self,
        host: &HeaderValue,
        extra: Option<(HeaderName, HeaderValue)>,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        // A path that does not parse as a URI is a bug of the caller's
        // template; it then goes out as `/` and the answers show it.
        *request.uri_mut() = self.path.parse().unwrap_or_default();
        *request.headers_mut() = self.headers.clone();
        request.headers_mut().insert(HOST, host.clone());
        if let Some((name, value)) = extra {
            request.headers_mut().insert(name, value);
        }
        request
    }
}

/// A keep-alive connection to one server, opened on the first request and
/// opened again after a failure or after the server closed it.
#[derive(Debug)]
pub(crate) struct Connection {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `addr`, not opened yet.
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: host_header(addr),
            sender: None,
        }
    }

    /// Sends `template`, with `extra` as one more header when given, and
    /// reads the whole answer; its status. After a failure the connection
    /// is dropped, and the next request opens a new one.
    pub(crate) async fn send(
        &mut self,
        template: &RequestTemplate,
        extra: Option<(HeaderName, HeaderValue)>,
    ) -> Result<StatusCode, TransportError> {
        let attempt = async {
            let mut sender = match self.sender.take() {
                Some(sender) if !sender.is_closed() => sender,
                _ => connect(self.addr).await?,
            };
            sender.ready().await?;
            let response = sender
                .send_request(template.build(&self.host, extra))
                .await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok((sender, status))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(Ok((sender, status))) => {
                self.sender = Some(sender);
                Ok(status)
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(TransportError::Timeout(REQUEST_TIMEOUT)),
        }
    }
}

/// A whole answer to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its body.
    pub(crate) body: Bytes,
}

impl Answer {
    /// The body as JSON; `null` when it is not JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `template` once to `addr` on a connection of its own and reads the
/// whole answer, all within `timeout`: for readiness checks, set-up calls
/// and checks around a load run.
///
/// # Errors
/// When the server cannot be reached or does not answer in time.
pub(crate) async fn send_once(
    addr: SocketAddr,
    template: &RequestTemplate,
    timeout: Duration,
) -> Result<Answer, TransportError> {
    let attempt = async {
        let mut sender = connect(addr).await?;
        sender.ready().await?;
        let response = sender
            .send_request(template.build(&host_header(addr), None))
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(TransportError::Timeout(timeout)))
}

fn host_header(addr: SocketAddr) -> HeaderValue {
    // A socket address always makes a valid header value.
    HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("localhost"))
}

/// Opens a connection and starts driving it in the background.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, TransportError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(TransportError::Connect)?;
    // Requests are small and latency is what is measured: do not let
    // Nagle's algorithm hold them back.
    stream.set_nodelay(true).map_err(TransportError::Connect)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends with an error when the server closes it; the
        // next request on it reports that, so there is nothing to add here.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_adds_host_and_keeps_method_path_headers_and_body() {
        let mut template = RequestTemplate::new(Method::POST, "/a/b?c=d");
        template
            .headers
            .insert("x-test", HeaderValue::from_static("yes"));
        template.body = Bytes::from_static(b"{}");
        let request = template.build(&HeaderValue::from_static("127.0.0.1:9"), None);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.headers()["x-test"], "yes");
        assert_eq!(request.headers()[HOST], "127.0.0.1:9");
        assert_eq!(request.headers().len(), 2, "nothing else is added");
    }

    #[test]
    fn an_extra_header_is_added_beside_the_templates_own() {
        let mut template = RequestTemplate::get("/");
        template
            .headers
            .insert("x-test", HeaderValue::from_static("yes"));
        let name = HeaderName::from_static("idempotency-key");
        let request = template.build(
            &HeaderValue::from_static("127.0.0.1:9"),
            Some((name.clone(), HeaderValue::from_static("k-0-0"))),
        );
        assert_eq!(request.headers()[&name], "k-0-0");
        assert_eq!(request.headers()["x-test"], "yes");
        assert!(
            !template.headers.contains_key(&name),
            "the template is unchanged"
        );
    }

    #[test]
    fn requests_carry_the_bearer_token_and_json_only_with_a_body() {
        let get = RequestTemplate::get("/a").bearer("t0k3n").expect("request");
        assert_eq!(get.headers[AUTHORIZATION], "Bearer t0k3n");
        assert!(get.headers.get(CONTENT_TYPE).is_none());
        assert!(get.body.is_empty());
        let post = RequestTemplate::new(Method::POST, "/b")
            .json(&serde_json::json!({"x": 1}))
            .expect("request");
        assert_eq!(post.headers[CONTENT_TYPE], "application/json");
        assert_eq!(post.body, Bytes::from_static(br#"{"x":1}"#));
        assert!(RequestTemplate::get("/").bearer("line\nbreak").is_err());
    }

    /// A server that answers every request with its method, path and body
    /// as JSON, and `/missing` with 404 and a body that is not JSON.
    async fn echo_server() -> SocketAddr {
        let app = axum::Router::new().fallback(
            |method: Method, uri: hyper::Uri, headers: HeaderMap, body: Bytes| async move {
                if uri.path() == "/missing" {
                    return (StatusCode::NOT_FOUND, "no such thing".to_owned());
                }
                let answer = serde_json::json!({
                    "method": method.as_str(),
                    "path": uri.to_string(),
                    "authorization": headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
                    "body": String::from_utf8_lossy(&body),
                });
                (StatusCode::OK, answer.to_string())
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_single_request_gives_back_the_status_and_the_body_as_json() {
        let addr = echo_server().await;
        let request = RequestTemplate::new(Method::PATCH, "/api/x?y=1")
            .bearer("t")
            .and_then(|request| request.json(&serde_json::json!({"is_paused": false})))
            .expect("request");
        let answer = send_once(addr, &request, Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.json(),
            serde_json::json!({
                "method": "PATCH",
                "path": "/api/x?y=1",
                "authorization": "Bearer t",
                "body": r#"{"is_paused":false}"#,
            })
        );
        let missing = send_once(
            addr,
            &RequestTemplate::get("/missing"),
            Duration::from_secs(5),
        )
        .await
        .expect("an answer");
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json(), serde_json::Value::Null);
    }

    #[tokio::test]
    async fn a_kept_connection_serves_request_after_request() {
        let addr = echo_server().await;
        let mut connection = Connection::new(addr);
        for _ in 0..3 {
            let status = connection
                .send(&RequestTemplate::get("/"), None)
                .await
                .expect("an answer");
            assert_eq!(status, StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_a_connect_error() {
        let addr = crate::process::free_local_addr().expect("a free port");
        let err = send_once(addr, &RequestTemplate::get("/"), Duration::from_secs(5))
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, TransportError::Connect(_)), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout() {
        // Accepts connections and never reads from them.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                streams.push(stream);
            }
        });
        let err = send_once(addr, &RequestTemplate::get("/"), Duration::from_millis(200))
            .await
            .expect_err("no answer");
        assert!(matches!(err, TransportError::Timeout(_)), "{err}");
        assert_eq!(err.to_string(), "no answer within 0.2s");
        held.abort();
    }
}
