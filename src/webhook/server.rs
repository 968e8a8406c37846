//! The thin HTTPS layer: TLS, HTTP/1.1, routing, limits and draining.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::lookup::SecretDirectory;
use super::review::review;
use super::tls::CertSource;

/// What one client may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body read; anything larger gets 413.
    pub max_body_bytes: usize,
    /// Time for the TLS handshake, and separately for each request's headers;
    /// hyper starts that clock as soon as a keep-alive connection goes idle,
    /// so it is also the idle timeout.
    pub header_timeout: Duration,
    /// Time in-flight requests get to finish once shutdown starts.
    pub drain: Duration,
}

/// Serves until `shutdown` resolves, then stops accepting (the listener is
/// closed, so new connections are refused) and gives open connections up to
/// `limits.drain` to finish their current request.
pub async fn serve<D: SecretDirectory>(
    listener: TcpListener,
    tls: Arc<CertSource>,
    directory: Arc<D>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, tls.clone(), directory.clone(), limits, stopping.clone()));
                }
                Err(error) => {
                    // Usually out of file descriptors: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reaps finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "shutting down; draining open connections"
    );
    // Receivers cloned from `stopping` never saw a value, so even connections
    // whose task has not started yet observe this.
    stop.send_replace(());
    let drained = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            abandoned = connections.len(),
            "drain deadline passed; closing the remaining connections"
        );
        connections.shutdown().await;
    }
}

async fn connection<D: SecretDirectory>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<CertSource>,
    directory: Arc<D>,
    limits: Limits,
    mut stopping: watch::Receiver<()>,
) {
    let acceptor = TlsAcceptor::from(tls.current().await);
    let stream = tokio::select! {
        handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)) => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stopping.changed() => return,
    };

    let service = service_fn(move |request| {
        let directory = directory.clone();
        async move { Ok::<_, Infallible>(route(request, &*directory, limits.max_body_bytes).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping.changed() => {
            // Finishes the request in flight, if any, then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

async fn route<D: SecretDirectory>(
    request: Request<Incoming>,
    directory: &D,
    max_body_bytes: usize,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/mutate") => handle_review(request, directory, max_body_bytes).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok".to_string()),
        _ => text(StatusCode::NOT_FOUND, "not found".to_string()),
    }
}

async fn handle_review<D: SecretDirectory>(
    request: Request<Incoming>,
    directory: &D,
    max_body_bytes: usize,
) -> Response<Full<Bytes>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds {max_body_bytes} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    // Refused before a byte of the body is read.
    if declared.is_some_and(|length| length > max_body_bytes as u64) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), max_body_bytes)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(error) => {
            tracing::debug!(%error, "reading the request body failed");
            return text(
                StatusCode::BAD_REQUEST,
                "the body could not be read".to_string(),
            );
        }
    };
    let answer = match review(&body, directory).await {
        Ok(answer) => answer,
        Err(malformed) => {
            tracing::warn!(error = %malformed, "malformed AdmissionReview");
            return text(StatusCode::BAD_REQUEST, malformed.to_string());
        }
    };
    match answer.to_json() {
        Ok(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        // An error status makes the API server apply the failure policy:
        // refused, for kloak-enabled pods.
        Err(error) => {
            tracing::error!(%error, "cannot encode the AdmissionReview response");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the response".to_string(),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
