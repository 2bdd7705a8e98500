//! Accepted client connections write their small frames in batches, one system call for what
//! a round of the runtime produced instead of one per response.
//!
//! Behind tonic, each HTTP/2 request stream is served by a task of its own, and the
//! connection's task writes what those tasks queued. Tokio runs a task that another task has
//! just woken next, on the same thread: when a new revision wakes the watchers of 10 streams
//! that share one connection, the connection's task runs after each of them and writes that
//! one event with its own `writev`. Under a watch fan-out that was one system call per
//! delivered event (about 87,000 a second across three members for 1000 watchers).
//!
//! [`Coalesced`] keeps what the HTTP/2 stack writes in a buffer and, when asked to flush,
//! first lets the runtime run the tasks already waiting (it yields once, going to the back
//! of the run queue) so that every stream that had something to send has queued it; the
//! next flush gives all of it to the socket at once. The delay is bounded by one pass over
//! the runtime's queue, never by a timer: on an idle member a response waits microseconds.
//! Large writes (a range response's data frames) go straight to the socket, uncopied.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Writes at least this large are not copied: they are given to the socket directly (after
/// what is buffered before them).
const DIRECT: usize = 4096;
/// Most bytes kept before they are given to the socket without waiting for a flush.
const LIMIT: usize = 64 * 1024;
/// Most buffer capacity an idle connection keeps (a member may hold many connections).
const RETAIN: usize = 8 * 1024;

/// A connection whose small writes are buffered until a flush, and whose flushes wait for
/// one pass of the runtime's run queue (see the module documentation).
pub struct Coalesced<S> {
    io: S,
    /// Written by the caller, not yet given to the socket.
    buf: BytesMut,
    /// The pending flush has already yielded once.
    yielded: bool,
}

impl<S> Coalesced<S> {
    pub fn new(io: S) -> Self {
        Coalesced {
            io,
            buf: BytesMut::new(),
            yielded: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Gives every buffered byte to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(tokio_util::io::poll_write_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.buf
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        // A burst leaves no large buffer behind on an idle connection.
        if self.buf.capacity() > RETAIN {
            self.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len >= DIRECT || this.buf.len() + len > LIMIT {
            // The socket gets the bytes in the order they were written: what is buffered first.
            ready!(this.poll_drain(cx))?;
            if len >= DIRECT {
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() && !this.yielded {
            // Woken while running, a task goes to the back of the run queue: the tasks
            // already waiting there (other streams of this connection) run first.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: Connected> Connected for Coalesced<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A socket that records each write call it gets, and can refuse writes for a while.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<Mutex<usize>>,
        /// Each write takes at most this many bytes (0: all of them).
        short: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            let n = if self.short == 0 {
                data.len()
            } else {
                data.len().min(self.short)
            };
            self.writes.lock().unwrap().push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            *self.flushes.lock().unwrap() += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Recorder {
        fn bytes(&self) -> Vec<u8> {
            self.writes.lock().unwrap().concat()
        }
        fn calls(&self) -> usize {
            self.writes.lock().unwrap().len()
        }
    }

    #[tokio::test]
    async fn small_writes_reach_the_socket_in_one_write_at_the_flush() {
        let socket = Recorder::default();
        let mut c = Coalesced::new(socket.clone());
        for i in 0..10u8 {
            c.write_all(&[i; 100]).await.unwrap();
        }
        assert_eq!(socket.calls(), 0, "nothing is written before a flush");
        c.flush().await.unwrap();
        assert_eq!(socket.calls(), 1);
        assert_eq!(*socket.flushes.lock().unwrap(), 1);
        let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(socket.bytes(), want);
    }

    #[tokio::test]
    async fn a_flush_yields_once_so_waiting_tasks_write_first() {
        let socket = Recorder::default();
        let mut c = Coalesced::new(socket.clone());
        c.write_all(b"first").await.unwrap();
        let mut flush = std::pin::pin!(c.flush());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(flush.as_mut().poll(&mut cx).is_pending(), "the first poll yields");
        assert_eq!(socket.calls(), 0);
        assert!(flush.as_mut().poll(&mut cx).is_ready(), "the second writes");
        assert_eq!(socket.bytes(), b"first");
    }

    #[tokio::test]
    async fn large_writes_go_straight_through_in_order() {
        let socket = Recorder::default();
        let mut c = Coalesced::new(socket.clone());
        c.write_all(b"head").await.unwrap();
        let big = vec![7u8; DIRECT];
        c.write_all(&big).await.unwrap();
        assert_eq!(socket.calls(), 2, "the buffered bytes, then the large write itself");
        c.write_all(b"tail").await.unwrap();
        c.flush().await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(socket.bytes(), want);
    }

    #[tokio::test]
    async fn short_socket_writes_and_the_limit_keep_every_byte_in_order() {
        let socket = Recorder {
            short: 1000,
            ..Default::default()
        };
        let mut c = Coalesced::new(socket.clone());
        let mut want = Vec::new();
        for i in 0..200u32 {
            let chunk = vec![i as u8; 1 + (i as usize * 37) % 3000];
            c.write_all(&chunk).await.unwrap();
            want.extend_from_slice(&chunk);
        }
        assert!(socket.calls() > 0, "past the limit, bytes go out before a flush");
        c.shutdown().await.unwrap();
        assert_eq!(socket.bytes(), want, "shutdown writes what was buffered");
        assert!(c.buf.capacity() <= RETAIN, "the drained buffer keeps little");
    }
}
