//! Accepted client connections, with one repair on the way in.
//!
//! etcdctl 3.4 (grpc-go 1.33) dials the endpoint URL itself, `http://10.0.0.1:2379`, for its
//! per-endpoint Maintenance calls (`endpoint status`, `endpoint hashkv`, `defrag`, every
//! endpoint command with `--cluster`) and sends that URL as the HTTP/2 `:authority`. grpc-go
//! servers never look at the value; the `h2` crate under tonic checks it and resets the
//! stream with PROTOCOL_ERROR, so those commands would fail against Lodestone.
//! [`ClientStream`] sits between the socket and tonic and rewrites such an `:authority` to
//! host and port, passing every other byte through as the client sent it.
//!
//! The rewrite cannot re-encode the block: both ends of an HTTP/2 connection share HPACK
//! state. The wrapper instead follows the client's dynamic table ([`hpack`]) and
//! replaces only a literal `:authority` with a scheme, in place, by a shorter raw literal of
//! the same kind. When that literal was indexed, the server's table receives a smaller entry
//! than the client's. Entries are addressed from the newest and evicted from the oldest by
//! size, so the server's table then always holds at least every entry the client's holds, at
//! the same indices, and later references resolve to the repaired value.
//!
//! Anything the wrapper cannot follow (not HTTP/2, a malformed frame, an undecodable block)
//! switches the connection to plain pass-through, so the HTTP/2 stack judges those bytes
//! exactly as it would without the wrapper. Payload bytes of large frames are read straight
//! into the caller's buffer; only frame headers and header blocks are looked at.

pub mod hpack;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use hpack::ClientTable;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames the wrapper writes fit the smallest SETTINGS_MAX_FRAME_SIZE a peer may advertise.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is not followed (the connection passes through); tonic's
/// own header list limit is far smaller.
const MAX_BLOCK: usize = 1 << 20;
/// Payload still due at least this large is read straight into the caller's buffer.
const DIRECT_READ: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose inbound HTTP/2 header blocks have schemed `:authority` values
/// repaired; writes go to the socket unchanged.
pub struct ClientStream<S> {
    io: S,
    rx: Inbound,
}

impl<S> ClientStream<S> {
    pub fn new(io: S) -> Self {
        ClientStream {
            io,
            rx: Inbound {
                state: State::Preface(0),
                input: BytesMut::new(),
                output: BytesMut::new(),
                block: None,
                table: ClientTable::default(),
            },
        }
    }
}

/// The inbound side: bytes read from the socket, looked at frame by frame.
struct Inbound {
    state: State,
    /// Read from the socket, not yet looked at.
    input: BytesMut,
    /// Looked at (and possibly repaired), waiting for the HTTP/2 stack.
    output: BytesMut,
    /// A header block whose HEADERS frame arrived but not yet its END_HEADERS.
    block: Option<Block>,
    table: ClientTable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Checking the client preface; the number of its bytes seen so far.
    Preface(usize),
    /// Waiting for a 9-byte frame header.
    Head,
    /// Passing through this many more bytes of a frame payload.
    Payload(usize),
    /// Waiting for the whole payload of a HEADERS or CONTINUATION frame.
    BlockFrame { kind: u8, flags: u8, len: usize },
    /// Not following this connection: every byte passes through.
    PassThrough,
}

struct Block {
    stream: [u8; 4],
    /// The HEADERS frame's flags.
    flags: u8,
    priority: Option<[u8; 5]>,
    /// The frames as received, written out unchanged when nothing needs repair.
    frames: BytesMut,
    /// The header block: the fragments of all its frames, without padding or priority.
    fragment: BytesMut,
}

impl Inbound {
    /// How much may be read straight into the caller's buffer, bypassing `input`.
    fn direct_limit(&self) -> Option<usize> {
        match self.state {
            State::PassThrough => Some(usize::MAX),
            State::Payload(left) if left >= DIRECT_READ => Some(left),
            _ => None,
        }
    }

    fn passed_directly(&mut self, n: usize) {
        if let State::Payload(left) = self.state {
            self.state = if left == n {
                State::Head
            } else {
                State::Payload(left - n)
            };
        }
    }

    fn move_out(&mut self, n: usize) {
        self.output.extend_from_slice(&self.input[..n]);
        self.input.advance(n);
    }

    /// Stops following the connection: what is held goes out as received.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.frames);
        }
        self.state = State::PassThrough;
    }

    /// Moves every complete piece of `input` to `output`, repairing header blocks.
    fn process(&mut self) {
        loop {
            match self.state {
                State::PassThrough => {
                    self.output.extend_from_slice(&self.input);
                    self.input.clear();
                    return;
                }
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(self.input.len());
                    if n == 0 {
                        return;
                    }
                    if self.input[..n] != PREFACE[seen..seen + n] {
                        self.state = State::PassThrough;
                        continue;
                    }
                    self.move_out(n);
                    self.state = if seen + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Head => {
                    if self.input.len() < FRAME_HEAD {
                        return;
                    }
                    let h = &self.input[..FRAME_HEAD];
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let (kind, flags) = (h[3], h[4]);
                    let in_block = self.block.is_some();
                    if in_block != (kind == CONTINUATION) {
                        // A HEADERS without its CONTINUATION, or a stray CONTINUATION: a
                        // connection error the HTTP/2 stack reports itself.
                        self.give_up();
                        continue;
                    }
                    if kind == HEADERS || kind == CONTINUATION {
                        let held = self.block.as_ref().map_or(0, |b| b.frames.len());
                        if held + FRAME_HEAD + len > MAX_BLOCK {
                            self.give_up();
                            continue;
                        }
                        self.state = State::BlockFrame { kind, flags, len };
                    } else {
                        self.move_out(FRAME_HEAD);
                        self.state = if len == 0 { State::Head } else { State::Payload(len) };
                    }
                }
                State::Payload(left) => {
                    let n = left.min(self.input.len());
                    if n == 0 {
                        return;
                    }
                    self.move_out(n);
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Payload(left - n)
                    };
                }
                State::BlockFrame { kind, flags, len } => {
                    if self.input.len() < FRAME_HEAD + len {
                        return;
                    }
                    let frame = self.input.split_to(FRAME_HEAD + len);
                    let payload = &frame[FRAME_HEAD..];
                    if kind == HEADERS {
                        let Some((priority, fragment)) = headers_fragment(flags, payload) else {
                            self.output.extend_from_slice(&frame);
                            self.state = State::PassThrough;
                            continue;
                        };
                        self.block = Some(Block {
                            stream: [frame[5], frame[6], frame[7], frame[8]],
                            flags,
                            priority,
                            frames: BytesMut::new(),
                            fragment: BytesMut::from(fragment),
                        });
                    } else if let Some(block) = self.block.as_mut() {
                        block.fragment.extend_from_slice(payload);
                    }
                    if let Some(block) = self.block.as_mut() {
                        block.frames.extend_from_slice(&frame);
                    }
                    self.state = State::Head;
                    if flags & END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
            }
        }
    }

    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else { return };
        match self.table.repair(&block.fragment) {
            Ok(None) => self.output.extend_from_slice(&block.frames),
            Ok(Some(fixed)) => write_block(&mut self.output, &block, &fixed),
            Err(err) => {
                tracing::debug!(%err, "client header block not followed; passing the connection through");
                self.output.extend_from_slice(&block.frames);
                self.state = State::PassThrough;
            }
        }
    }

    /// The socket reached end of file: whatever is held goes out as received.
    fn at_eof(&mut self) {
        self.give_up();
        self.process();
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment; `None` when
/// the padding or priority fields do not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*rest.first()?);
        rest = &rest[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (p, r) = rest.split_first_chunk::<5>()?;
        priority = Some(*p);
        rest = r;
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

fn frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream);
}

/// Writes a repaired header block as one HEADERS frame and as many CONTINUATION frames as it
/// needs, keeping END_STREAM and priority and dropping padding.
fn write_block(out: &mut BytesMut, block: &Block, fixed: &[u8]) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = fixed.split_at(fixed.len().min(MAX_FRAME - prio_len));
    let mut flags = block.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_head(out, prio_len + first.len(), HEADERS, flags, block.stream);
    if let Some(p) = block.priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = r;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_head(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.extend_from_slice(chunk);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let rx = &mut this.rx;
            if !rx.output.is_empty() {
                let n = rx.output.len().min(buf.remaining());
                buf.put_slice(&rx.output[..n]);
                rx.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            let direct = rx.input.is_empty() && rx.direct_limit().is_some_and(|limit| buf.remaining() <= limit);
            if direct {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                this.rx.passed_directly(buf.filled().len() - before);
                return Poll::Ready(Ok(()));
            }
            rx.input.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.rx.input
            ))?;
            if n == 0 {
                this.rx.at_eof();
                if this.rx.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.rx.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for ClientStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> S::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// etcdctl 3.4's `endpoint status` request headers for `http://127.0.0.1:23999`.
    const ETCDCTL_STATUS: &str = "8386459760a924882d9dcb6571afa066a925a87510ac6e48d36a3f41909d29aee30c044eae05c0b86e0997df7f5f8b1d75d0620d263d4c4d65647a8b9acac8b4c7602bb2caecff40027465864d833505b11f40899acac8b24d494f6a7f867df7c4e376ff408d25062d495875996ee5b1063d5f03332e34";
    /// A second request on the same connection naming every field by its dynamic index, as
    /// grpc-go does: :path 68, :authority 67, content-type 66, user-agent 65, te 64,
    /// client-api-version 62.
    const REUSE: [u8; 8] = [0x83, 0x86, 0xc4, 0xc3, 0xc2, 0xc1, 0xc0, 0xbe];

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_head(&mut out, payload.len(), kind, flags, stream.to_be_bytes());
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn client_preface() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out
    }

    /// Feeds `bytes` to an `h2` server, through the repair or not, over a pipe of `pipe`
    /// bytes, and returns the first `n` requests' authorities and bodies. The client side
    /// stays open meanwhile (at end of file `h2` drops requests it has not handed out).
    async fn serve(bytes: Vec<u8>, repair: bool, pipe: usize, n: usize) -> Vec<(String, Vec<u8>)> {
        let (client, server) = tokio::io::duplex(pipe);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            to_server.write_all(&bytes).await.unwrap();
            to_server
        });
        // The server's own frames are read and dropped.
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = from_server.read_to_end(&mut sink).await;
        });
        let requests = tokio::time::timeout(Duration::from_secs(20), async {
            if repair {
                accept(ClientStream::new(server), n).await
            } else {
                accept(server, n).await
            }
        })
        .await
        .expect("requests within 20 s");
        let _ = writer.await;
        drain.abort();
        requests
    }

    /// The first `n` requests the server accepts: authority and body. Bodies are read in
    /// their own tasks while `accept` keeps driving the connection.
    async fn accept<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: T, n: usize) -> Vec<(String, Vec<u8>)> {
        let mut conn = h2::server::handshake(io).await.unwrap();
        let mut requests = Vec::new();
        while requests.len() < n {
            let (req, respond) = conn.accept().await.expect("connection open").expect("request");
            let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
            let mut body = req.into_body();
            requests.push(tokio::spawn(async move {
                let _respond = respond;
                let mut data = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    body.flow_control().release_capacity(chunk.len()).unwrap();
                    data.extend_from_slice(&chunk);
                }
                (authority, data)
            }));
        }
        let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let mut out = Vec::new();
        for r in requests {
            out.push(r.await.unwrap());
        }
        driver.abort();
        out
    }

    fn two_requests() -> Vec<u8> {
        let mut bytes = client_preface();
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &hex(ETCDCTL_STATUS)));
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &REUSE));
        bytes
    }

    #[tokio::test]
    async fn h2_refuses_what_etcdctl_sends() {
        // The control: without the repair neither request reaches the service; a third one
        // with a plain authority (never indexed) is the first to arrive.
        let mut bytes = two_requests();
        let mut third = vec![0x83, 0x86, 0x04, 2, b'/', b'x', 0x01, 11];
        third.extend_from_slice(b"127.0.0.1:1");
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));
        let got = serve(bytes, false, 64 * 1024, 1).await;
        assert_eq!(got[0].0, "127.0.0.1:1");
    }

    #[tokio::test]
    async fn repaired_requests_reach_h2_with_host_and_port() {
        let got = serve(two_requests(), true, 64 * 1024, 2).await;
        let authorities: Vec<&str> = got.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(authorities, ["127.0.0.1:23999", "127.0.0.1:23999"]);
    }

    #[tokio::test]
    async fn byte_by_byte_with_padding_priority_and_continuation() {
        let block = hex(ETCDCTL_STATUS);
        let (a, b) = block.split_at(40);
        let mut bytes = client_preface();
        // HEADERS: padded (3 bytes), with priority, END_STREAM, the block's first part.
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        bytes.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        let (b1, b2) = b.split_at(10);
        bytes.extend(frame(CONTINUATION, 0, 1, b1));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, b2));
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &REUSE));
        let got = serve(bytes, true, 1, 2).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(a, _)| a == "127.0.0.1:23999"), "{got:?}");
    }

    #[tokio::test]
    async fn bodies_pass_through_unchanged() {
        let body: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut bytes = client_preface();
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &hex(ETCDCTL_STATUS)));
        let chunks: Vec<&[u8]> = body.chunks(15_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let flags = if i + 1 == chunks.len() { END_STREAM } else { 0 };
            bytes.extend(frame(0x0, flags, 1, chunk));
        }
        // A PING between requests, then the second request.
        bytes.extend(frame(0x6, 0, 0, &[7; 8]));
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &REUSE));
        for pipe in [1000, 64 * 1024] {
            let got = serve(bytes.clone(), true, pipe, 2).await;
            assert_eq!(got.len(), 2, "pipe {pipe}");
            assert_eq!(got[0].0, "127.0.0.1:23999");
            assert!(got[0].1 == body, "body changed (pipe {pipe})");
            assert_eq!(got[1].0, "127.0.0.1:23999");
        }
    }

    #[test]
    fn not_http2_passes_through() {
        let mut rx = ClientStream::new(()).rx;
        rx.input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        rx.process();
        assert_eq!(rx.state, State::PassThrough);
        assert_eq!(&rx.output[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[test]
    fn undecodable_blocks_switch_to_pass_through() {
        let mut rx = ClientStream::new(()).rx;
        let mut bytes = client_preface();
        let bad = frame(HEADERS, END_HEADERS, 1, &[0xff]); // truncated index
        bytes.extend(bad);
        bytes.extend(frame(HEADERS, END_HEADERS, 3, &hex(ETCDCTL_STATUS)));
        rx.input.extend_from_slice(&bytes);
        rx.process();
        assert_eq!(rx.state, State::PassThrough);
        assert_eq!(&rx.output[..], &bytes[..], "every byte as received");
    }
}
