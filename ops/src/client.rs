//! Kube clients for writers that must stop writing the instant their right to write ends.
//!
//! ```text
//!   Api call ─▶ base URI, auth, headers ─▶ hyper pool ─▶ TLS ─▶ FencedIo ─▶ TCP socket
//!                                                                 │
//!                                          gate() false: refuse the bytes, poison the
//!                                          connection (nothing it buffered ever leaves)
//! ```
//!
//! A writer checks its lease right before each call, but between that check and the bytes
//! reaching the socket there are task hops (kube's buffer, hyper's connection task, a TLS
//! handshake on a fresh connection). A process frozen (SIGSTOP) in that gap would send the
//! request after it thaws, when its lease may be someone else's. The fenced transport
//! re-checks the gate in the socket write itself, so after the gate closes not one byte of a
//! request goes out. Reads are never gated: answers to requests already sent still arrive.
//!
//! The client also has no transparent retries (kube's default retry layer would resend a
//! write later without asking anyone): every retry is the caller's, after its own check.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

/// Whether bytes may be written now.
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long to wait for a TCP connection to the API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client from the standard discovery (in-cluster, then `KUBECONFIG`) whose socket writes
/// pass only while `gate` says so, without transparent retries.
pub async fn fenced_client(
    gate: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    fenced_client_from(config, Arc::new(gate))
}

/// [`fenced_client`] from an explicit configuration.
pub fn fenced_client_from(config: kube::Config, gate: Gate) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout.unwrap_or(CONNECT_TIMEOUT)));
    let connector = FencedConnector { inner: http, gate };
    let https = config.rustls_https_connector_with_connector(connector)?;
    let hyper: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Connects like the inner connector; the connection's writes go through the gate.
#[derive(Clone)]
struct FencedConnector {
    inner: HttpConnector,
    gate: Gate,
}

impl tower::Service<Uri> for FencedConnector {
    type Response = FencedIo<<HttpConnector as tower::Service<Uri>>::Response>;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let gate = self.gate.clone();
        Box::pin(async move {
            let io = connecting.await?;
            Ok(FencedIo {
                inner: io,
                gate,
                poisoned: false,
            })
        })
    }
}

/// A connection whose writes pass only while the gate is open. Once one is refused the
/// connection refuses every later write too: whatever a TLS layer above had buffered is
/// never sent, however the gate changes later.
struct FencedIo<T> {
    inner: T,
    gate: Gate,
    poisoned: bool,
}

impl<T> FencedIo<T> {
    fn admit(&mut self) -> io::Result<()> {
        if !self.poisoned && !(self.gate)() {
            self.poisoned = true;
        }
        if self.poisoned {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "fenced: this process may not write to the API server now",
            ));
        }
        Ok(())
    }
}

impl<T: Read + Unpin> Read for FencedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for FencedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.admit() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.admit() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for FencedIo<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_closed_gate_refuses_writes_for_good() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let gate: Gate = {
            let open = open.clone();
            Arc::new(move || open.load(Ordering::SeqCst))
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let mut connector = FencedConnector { inner: http, gate };
        let io = tower::Service::call(&mut connector, format!("http://{addr}").parse().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut io = hyper_util::rt::TokioIo::new(io);
        io.write_all(b"before").await.unwrap();
        open.store(false, Ordering::SeqCst);
        let e = io.write_all(b"after").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        open.store(true, Ordering::SeqCst);
        assert!(
            io.write_all(b"later").await.is_err(),
            "a refused connection stays refused"
        );
        // Reads still work, and only the bytes written while open arrived.
        server.write_all(b"answer").await.unwrap();
        let mut buf = [0u8; 6];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"answer");
        drop(io);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"before");
    }
}
