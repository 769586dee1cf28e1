//! The one accept loop behind every test server of the harness (backends,
//! discovery, control, RLS).

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Wire protocol of a test server.
#[derive(Clone)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge (gRPC).
    Http2,
    /// TLS, then HTTP/2 when the client picks `h2` by ALPN, else HTTP/1.1.
    Tls(tokio_rustls::TlsAcceptor),
}

/// Serves `listener` until the calling task is aborted. Connection tasks live
/// in a `JoinSet` owned by this future, so aborting it closes every
/// connection too (a stopped server refuses and resets, like a dead one).
/// `on_accept` runs once per accepted connection (e.g. to count them).
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    protocol: Protocol,
    on_accept: impl Fn(),
    handle: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small responses: don't let Nagle add latency.
                    let _ = stream.set_nodelay(true);
                    on_accept();
                    let handle = handle.clone();
                    let protocol = protocol.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let fut = handle(req);
                            async move { Ok::<_, Infallible>(fut.await) }
                        });
                        // Errors here are clients going away; nothing to do.
                        match protocol {
                            Protocol::Http1 => serve_conn(TokioIo::new(stream), svc, false).await,
                            Protocol::Http2 => serve_conn(TokioIo::new(stream), svc, true).await,
                            Protocol::Tls(acceptor) => {
                                let Ok(tls) = acceptor.accept(stream).await else { return };
                                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve_conn(TokioIo::new(tls), svc, h2).await;
                            }
                        }
                    });
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one connection: HTTP/2 when `h2`, else HTTP/1.1 with keep-alive.
async fn serve_conn<I, S, B>(io: I, svc: S, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = if h2 {
        http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(256 * 1024)
            .serve_connection(io, svc)
            .await
    };
}

/// The body of a gRPC response: the framed message, then trailers.
pub type GrpcBody = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<HeaderMap, Infallible>>>,
>;

/// A unary gRPC response: `message` in one length-prefixed frame (none for
/// a trailers-only style answer), then `trailers` (which should hold
/// `grpc-status`).
pub fn grpc_response(message: Option<&[u8]>, trailers: HeaderMap) -> Response<GrpcBody> {
    let mut body = BytesMut::new();
    if let Some(m) = message {
        body.put_u8(0);
        body.put_u32(u32::try_from(m.len()).unwrap_or(u32::MAX));
        body.put_slice(m);
    }
    let body = Full::new(body.freeze()).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    resp
}
