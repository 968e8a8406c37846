//! The node agent's operations endpoints over plain HTTP: `/healthz`,
//! `/readyz` and `/metrics`. They carry no secret material, so no TLS.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::metrics::Metrics;

/// A client that has not sent its headers by then is dropped, so idle or
/// slow connections cannot pile up on the agent.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Accept fails on resource exhaustion (EMFILE); retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What readiness depends on; set by the agent as it starts.
#[derive(Debug, Default)]
pub struct Health {
    dataplane_loaded: AtomicBool,
    first_sync_done: AtomicBool,
}

impl Health {
    pub fn set_dataplane_loaded(&self, loaded: bool) {
        self.dataplane_loaded.store(loaded, Ordering::Relaxed);
    }

    pub fn set_first_sync_done(&self, done: bool) {
        self.first_sync_done.store(done, Ordering::Relaxed);
    }

    /// What still keeps the agent from being ready.
    fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.dataplane_loaded.load(Ordering::Relaxed) {
            missing.push("data plane not loaded");
        }
        if !self.first_sync_done.load(Ordering::Relaxed) {
            missing.push("first sync not done");
        }
        missing
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn respond(method: &Method, path: &str, health: &Health, metrics: &Metrics) -> Response<Body> {
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return text(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if method != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/readyz" => {
            let missing = health.missing();
            if missing.is_empty() {
                text(StatusCode::OK, TEXT, "ok\n")
            } else {
                let body = format!("not ready: {}\n", missing.join(", "));
                text(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        }
        "/metrics" => match metrics.encode() {
            Ok(body) => text(StatusCode::OK, OPENMETRICS, body),
            Err(err) => {
                error!(error = %err, "cannot encode metrics");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "cannot encode metrics\n",
                )
            }
        },
        _ => text(StatusCode::OK, TEXT, "ok\n"),
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes, then stops
/// accepting and gives open connections [`DRAIN_TIMEOUT`] to finish.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    info!(address = %listener.local_addr()?, "serving health and metrics");
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Dropping the sender tells every connection to finish and close.
    let (stop, stopped) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let health = Arc::clone(&health);
        let metrics = Arc::clone(&metrics);
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(request.method(), request.uri().path(), &health, &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopped.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stop);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "connections still open after the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
    info!("health and metrics server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;
    use http::HeaderMap;
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http1::SendRequest;
    use std::net::SocketAddr;
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    struct Server {
        address: SocketAddr,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<anyhow::Result<()>>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&health),
            Arc::clone(&metrics),
            shutdown,
        ));
        Server {
            address,
            health,
            metrics,
            stop,
            task,
        }
    }

    async fn connect(address: SocketAddr) -> SendRequest<Empty<Bytes>> {
        let stream = TcpStream::connect(address).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    }

    async fn send(
        sender: &mut SendRequest<Empty<Bytes>>,
        method: Method,
        path: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).expect("UTF-8 body");
        (status, headers, body)
    }

    async fn call(
        address: SocketAddr,
        method: Method,
        path: &str,
    ) -> (StatusCode, HeaderMap, String) {
        send(&mut connect(address).await, method, path).await
    }

    async fn stop(server: Server) {
        let _ = server.stop.send(());
        server
            .task
            .await
            .expect("the server task ends")
            .expect("the server stops cleanly");
    }

    #[tokio::test]
    async fn healthz_answers_while_serving() {
        let server = start().await;
        let (status, _, body) = call(server.address, Method::GET, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");
        stop(server).await;
    }

    #[tokio::test]
    async fn readyz_needs_the_data_plane_and_the_first_sync() {
        let server = start().await;
        let (status, _, body) = call(server.address, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: data plane not loaded, first sync not done\n"
        );

        server.health.set_dataplane_loaded(true);
        let (status, _, body) = call(server.address, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: first sync not done\n");

        server.health.set_dataplane_loaded(false);
        server.health.set_first_sync_done(true);
        let (status, _, body) = call(server.address, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: data plane not loaded\n");

        server.health.set_dataplane_loaded(true);
        let (status, _, body) = call(server.address, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");
        stop(server).await;
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let server = start().await;
        server.metrics.set_pods(3);
        let (status, headers, body) = call(server.address, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok()),
            Some(OPENMETRICS)
        );
        assert!(body.contains("# TYPE kloak_pods_tracked gauge\n"));
        assert!(body.contains("kloak_pods_tracked 3\n"));
        assert!(body.contains("# TYPE kloak_sync_latency_seconds histogram\n"));
        assert!(body.ends_with("# EOF\n"));
        stop(server).await;
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let server = start().await;
        for path in ["/", "/metrics/", "/healthz/extra", "/livez"] {
            let (status, _, _) = call(server.address, Method::GET, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        stop(server).await;
    }

    #[tokio::test]
    async fn only_get_is_allowed() {
        let server = start().await;
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
            let (status, headers, _) = call(server.address, method.clone(), "/metrics").await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(
                headers.get(ALLOW).and_then(|value| value.to_str().ok()),
                Some("GET")
            );
        }
        stop(server).await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_listening() {
        let server = start().await;
        let address = server.address;
        // An idle keep-alive connection must not hold the stop up to the
        // drain timeout.
        let mut idle = connect(address).await;
        let (status, _, _) = send(&mut idle, Method::GET, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(2), stop(server))
            .await
            .expect("stops well before the drain timeout");
        assert!(TcpStream::connect(address).await.is_err());
    }
}
