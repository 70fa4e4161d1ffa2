//! The first bytes of a connection, read under a deadline.
//!
//! hyper-util's auto builder waits, without any timeout, for enough bytes to
//! tell HTTP/1.1 from the HTTP/2 preface. A client that connects and sends
//! nothing (or one byte) would hold its connection slot forever. So the
//! server reads those bytes itself, within the header timeout, and hands
//! hyper a stream that replays them. Over TLS the same holds for the
//! decrypted stream, and the deadline is the one the handshake began under.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes decide the protocol: the full HTTP/2 preface, or
/// anything that departs from it, by `until`. `None` if the client closed
/// or stalled.
pub(super) async fn first_bytes<S: AsyncRead + Unpin>(
    mut stream: S,
    until: Instant,
) -> Option<Prefixed<S>> {
    let mut prefix = BytesMut::with_capacity(1024);
    let decided = tokio::time::timeout_at(until, async {
        loop {
            if stream.read_buf(&mut prefix).await.ok()? == 0 {
                return None;
            }
            let n = prefix.len().min(H2_PREFACE.len());
            if prefix.len() >= H2_PREFACE.len() || prefix[..n] != H2_PREFACE[..n] {
                return Some(());
            }
        }
    })
    .await;
    match decided {
        Ok(Some(())) => Some(Prefixed {
            prefix: prefix.freeze(),
            inner: stream,
        }),
        _ => None,
    }
}

/// A stream whose first reads return bytes already taken from it.
#[derive(Debug)]
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
