//! Accepted connections that tell the memory reclaimer when they close.
//!
//! A connection's HTTP/2 buffers and tasks are freed when the connection closes, which can
//! be well after its streams ended (the client closes the socket later, or the server is
//! still draining thousands of them). Counting only stream departures, the reclaimer could
//! return memory before the bulk of it was freed; counting connections too, it waits until
//! they are gone.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::memory::Reclaimer;

/// A connection that notes its departure with the reclaimer when dropped.
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    reclaimer: Arc<Reclaimer>,
}

impl<T> Tracked<T> {
    /// Wraps `io`.
    pub fn new(io: T, reclaimer: Arc<Reclaimer>) -> Self {
        reclaimer.connection_opened();
        Tracked { io, reclaimer }
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.reclaimer.connection_closed();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn should_count_open_connections_and_release_memory_once_one_closes() {
        let reclaimer = Arc::new(Reclaimer::new(Duration::from_secs(1), Duration::ZERO));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let r = Arc::clone(&reclaimer);
            let stop = stop.clone();
            async move { r.run(stop).await }
        });
        let (near, mut far) = tokio::io::duplex(64);
        let mut conn = Tracked::new(near, Arc::clone(&reclaimer));
        // The connection passes bytes through both ways.
        conn.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        far.write_all(b"pong").await.unwrap();
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        assert_eq!(reclaimer.open_connections(), 1);
        drop(conn);
        assert_eq!(reclaimer.open_connections(), 0);
        assert!(!reclaimer.settled(), "settled before the release");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            reclaimer.releases(),
            1,
            "not released after the connection closed"
        );
        assert!(reclaimer.settled());
        stop.cancel();
        task.await.unwrap();
    }
}
