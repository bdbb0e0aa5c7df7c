//! A TCP stream tuned for many small gRPC messages on one HTTP/2 connection.
//!
//! h2 copies a DATA frame into its 16 KiB write buffer only if the frame is small; a
//! larger frame is sent as its own buffer and forces a flush before the next frame, i.e.
//! one `writev` per message. "Small" means up to 256 bytes on a socket that supports
//! vectored writes and up to 1 KiB on one that doesn't. Cache messages are mostly a few
//! hundred bytes (a key, a value of a session, metadata), right between the two: over a
//! socket that declines vectored writes, dozens of them leave in one system call instead
//! of one each. Values over 1 KiB are still sent without a copy.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::ClientTls;

/// A [`TcpStream`] that declines vectored writes, so small gRPC messages are coalesced.
#[derive(Debug)]
pub struct CoalescingStream {
    inner: TcpStream,
}

impl CoalescingStream {
    /// Wraps a stream and turns Nagle's algorithm off: messages are already coalesced.
    pub fn new(inner: TcpStream) -> io::Result<CoalescingStream> {
        inner.set_nodelay(true)?;
        Ok(CoalescingStream { inner })
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for CoalescingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Callers that ignore `is_write_vectored` still work, one buffer at a time.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        Pin::new(&mut self.inner).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CoalescingStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The longest any call between nodes (in a site or between sites) may wait for its
/// answer, or a stream for its next message: a backstop behind each call's own, tighter
/// deadline, so that no call to a peer that stopped answering (frozen, half-open
/// connection) waits forever.
pub const INTERNAL_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The endpoint of a node's own kind at `address` (`HOST:PORT`, or with a scheme): a
/// member of the site, a peer site's node, the witness. Opening a connection may take
/// `connect_timeout`; each call is bounded by [`INTERNAL_CALL_DEADLINE`]; keep-alives
/// notice a dead link within seconds.
pub fn internal_endpoint(
    address: &str,
    connect_timeout: std::time::Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(connect_timeout)
        .timeout(INTERNAL_CALL_DEADLINE)
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .keep_alive_timeout(std::time::Duration::from_secs(5)))
}

/// A connection that is plain or TLS over a [`CoalescingStream`]; clients and servers
/// each use it with their side's TLS stream.
#[derive(Debug)]
pub enum MaybeTls<T> {
    /// No TLS.
    Plain(CoalescingStream),
    /// TLS, boxed: a TLS stream is several kilobytes.
    Tls(Box<T>),
}

impl<T> MaybeTls<T> {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream
    where
        T: AsRef<CoalescingStream>,
    {
        match self {
            MaybeTls::Plain(stream) => stream.get_ref(),
            MaybeTls::Tls(tls) => (**tls).as_ref().get_ref(),
        }
    }
}

impl AsRef<CoalescingStream> for tokio_rustls::client::TlsStream<CoalescingStream> {
    fn as_ref(&self) -> &CoalescingStream {
        self.get_ref().0
    }
}

impl AsRef<CoalescingStream> for tokio_rustls::server::TlsStream<CoalescingStream> {
    fn as_ref(&self) -> &CoalescingStream {
        self.get_ref().0
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(&mut **stream).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(&mut **stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(stream) => Pin::new(&mut **stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(stream) => stream.is_write_vectored(),
            MaybeTls::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTls::Tls(stream) => Pin::new(&mut **stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTls::Tls(stream) => Pin::new(&mut **stream).poll_shutdown(cx),
        }
    }
}

/// A connection a server accepted.
pub type ServerStream = MaybeTls<tokio_rustls::server::TlsStream<CoalescingStream>>;

/// What a server knows of a connection: where it comes from and, over TLS with a client
/// certificate, the names the verified certificate vouches for. Servers put it in each
/// request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The names of the client's verified certificate.
    pub peer: Option<crate::tls::PeerNames>,
}

impl ConnInfo {
    /// The connection a request came on, if it came through a sitegrid server.
    pub fn of(extensions: &tonic::Extensions) -> Option<&ConnInfo> {
        extensions.get::<ConnInfo>()
    }
}

impl tonic::transport::server::Connected for ServerStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let peer = match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(crate::tls::PeerNames::of),
        };
        ConnInfo {
            remote: self.tcp().peer_addr().ok(),
            peer,
        }
    }
}

/// A client connection.
pub type ClientStream = MaybeTls<tokio_rustls::client::TlsStream<CoalescingStream>>;

/// A channel to `endpoint` whose connections are [`CoalescingStream`]s, in TLS when `tls`
/// is given; it connects on first use (and again after a connection breaks).
pub fn lazy_channel(endpoint: &Endpoint, tls: Option<ClientTls>) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move { connect(uri, tls).await }
    }))
}

async fn connect(uri: Uri, tls: Option<ClientTls>) -> io::Result<TokioIo<ClientStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    // IPv6 literals come bracketed in URIs, not in socket addresses.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let stream = CoalescingStream::new(TcpStream::connect((host, port)).await?)?;
    Ok(TokioIo::new(match tls {
        None => MaybeTls::Plain(stream),
        Some(tls) => {
            let name = tls.server_name(host)?;
            let connector = tokio_rustls::TlsConnector::from(tls.config());
            MaybeTls::Tls(Box::new(connector.connect(name, stream).await?))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_vectored_write_sends_the_first_non_empty_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(address).await.unwrap();
            let mut stream = CoalescingStream::new(tcp).unwrap();
            assert!(!stream.is_write_vectored());
            let bufs = [
                IoSlice::new(b""),
                IoSlice::new(b"hello "),
                IoSlice::new(b"world"),
            ];
            let written =
                std::future::poll_fn(|cx| Pin::new(&mut stream).poll_write_vectored(cx, &bufs))
                    .await
                    .unwrap();
            stream.shutdown().await.unwrap();
            written
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(client.await.unwrap(), 6);
        assert_eq!(&received, b"hello ");
    }
}
