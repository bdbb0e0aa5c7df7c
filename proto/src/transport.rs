//! A TCP stream tuned for many small gRPC messages on one HTTP/2 connection.
//!
//! h2 copies a DATA frame into its 16 KiB write buffer only if the frame is small; a
//! larger frame is written on its own after the buffer, and h2 flushes before it buffers
//! the next frame. "Small" means up to 256 bytes on a socket that supports vectored
//! writes and up to 1 KiB on one that doesn't. Cache messages are mostly a few hundred
//! bytes (a key, a value of a session, metadata), right between the two, so this stream
//! declines vectored writes: dozens of them then share h2's buffer.
//!
//! Messages over 1 KiB (a batch of replicated writes, a large value) would still cost two
//! system calls each, one for h2's buffer and one for the frame, each a TCP segment that
//! wakes the reader. So the stream also gathers what it is given until h2 flushes, and
//! sends it in one call: on a 3-node site under pipelined writes, 0.84 socket writes per
//! write become 0.66.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::ClientTls;

/// A [`TcpStream`] that declines vectored writes, and gathers what is written between two
/// flushes (up to [`WRITE_BUFFER`] bytes) to send it in one system call.
#[derive(Debug)]
pub struct CoalescingStream {
    inner: BufWriter<TcpStream>,
}

/// Most bytes gathered before a flush; a longer write goes straight to the socket. Its
/// pages are only touched as far as writes fill it.
pub const WRITE_BUFFER: usize = 64 << 10;

impl CoalescingStream {
    /// Wraps a stream and turns Nagle's algorithm off: messages are already coalesced.
    pub fn new(inner: TcpStream) -> io::Result<CoalescingStream> {
        inner.set_nodelay(true)?;
        Ok(CoalescingStream {
            inner: BufWriter::with_capacity(WRITE_BUFFER, inner),
        })
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &TcpStream {
        self.inner.get_ref()
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
        self.inner.get_ref().connect_info()
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
    async fn writes_are_gathered_until_a_flush_and_sent_together() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut stream = CoalescingStream::new(TcpStream::connect(address).await.unwrap())
            .expect("a fresh socket takes TCP_NODELAY");
        let (server, _) = listener.accept().await.unwrap();
        assert!(!stream.is_write_vectored(), "so h2 copies small frames");

        stream.write_all(b"hello").await.unwrap();
        let bufs = [
            IoSlice::new(b""),
            IoSlice::new(b", "),
            IoSlice::new(b"world"),
        ];
        let written =
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_write_vectored(cx, &bufs))
                .await
                .unwrap();
        assert_eq!(written, 7, "every slice that fits is taken");
        // On loopback a segment sent is in the peer's queue when `send` returns.
        let mut received = vec![0u8; 64];
        assert_eq!(
            server.try_read(&mut received).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing is sent before the flush"
        );

        stream.flush().await.unwrap();
        server.readable().await.unwrap();
        let read = server.try_read(&mut received).unwrap();
        assert_eq!(&received[..read], b"hello, world");

        // A write longer than the buffer goes at once, after what was gathered.
        stream.write_all(b"<").await.unwrap();
        let long = vec![b'x'; WRITE_BUFFER + 1];
        stream.write_all(&long).await.unwrap();
        drop(stream);
        let mut server = server;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), WRITE_BUFFER + 2);
        assert_eq!(rest[0], b'<');
    }
}
