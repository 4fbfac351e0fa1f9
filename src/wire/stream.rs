//! Async frame reader and writer over any byte stream.
//!
//! Owns: buffering partial frames, telling a clean end of stream (between
//! frames) from a truncated frame, and writing whole frames. The reader and
//! the writer are separate values so one task can read while another writes.
//! Must never: grow the read buffer past one frame's worth
//! (`HEADER_BYTES + MAX_FRAME_BYTES`), or hand out a message decoded from a
//! frame that was not complete and exact.

use super::WireError;
use super::frame::{self, Split};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// How much the read buffer grows by at least, so small frames are read in
/// few calls.
const READ_CHUNK: usize = 16 * 1024;
/// A buffer grown for a large frame is given back once it is mostly empty.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Reads frames of `M` from `R`.
pub struct FrameReader<R, M> {
    inner: R,
    buf: Vec<u8>,
    _msg: PhantomData<fn() -> M>,
}

impl<R: AsyncRead + Unpin, M: DeserializeOwned> FrameReader<R, M> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            _msg: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the stream ended cleanly between
    /// frames. A stream that ends inside a frame is `Truncated`; bytes that
    /// are not a valid frame are `Oversized`, `Decode` or `TrailingBytes`
    /// (see [`WireError::is_malformed`]). After an error the stream is out of
    /// step and should be dropped.
    ///
    /// Cancel-safe: bytes read before a cancellation stay buffered, so it can
    /// be used as a `tokio::select!` branch.
    pub async fn recv(&mut self) -> Result<Option<M>, WireError> {
        loop {
            let frame_len = match frame::split_frame(&self.buf)? {
                Split::Frame { body, consumed } => {
                    let decoded = super::codec::decode(body);
                    self.consume(consumed);
                    return decoded.map(Some);
                }
                Split::NeedMore { frame_len } => frame_len,
            };
            self.reserve_for(frame_len);
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(WireError::Truncated {
                    have: self.buf.len(),
                    want: frame_len,
                });
            }
        }
    }

    /// Make room to read towards a frame of `frame_len` bytes. Capacity grows
    /// by doubling (so large frames are not copied over and over) but never
    /// past what the frame in progress needs, which the header check has
    /// already bounded.
    fn reserve_for(&mut self, frame_len: usize) {
        let (len, cap) = (self.buf.len(), self.buf.capacity());
        if cap > len {
            return;
        }
        let ceiling = frame_len.max(READ_CHUNK);
        let target = cap.saturating_mul(2).max(len + READ_CHUNK).min(ceiling);
        // `len < frame_len <= ceiling`, so `target > len`.
        self.buf.reserve_exact(target.saturating_sub(len).max(1));
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() <= READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream. Bytes already read but not yet decoded are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes frames of `M` to `W`.
pub struct FrameWriter<W, M> {
    inner: W,
    buf: Vec<u8>,
    /// Frame bytes written so far (for metrics).
    written: u64,
    _msg: PhantomData<fn(M)>,
}

impl<W: AsyncWrite + Unpin, M: Serialize> FrameWriter<W, M> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            written: 0,
            _msg: PhantomData,
        }
    }

    /// Frame bytes written by this writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Write one frame and flush it.
    ///
    /// Not cancel-safe: a cancelled send may leave half a frame on the
    /// stream, which must then be dropped.
    pub async fn send(&mut self, msg: &M) -> Result<(), WireError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Write one frame without flushing (several frames, then one `flush`).
    /// A message too large for a frame fails before anything is written.
    pub async fn feed(&mut self, msg: &M) -> Result<(), WireError> {
        self.buf.clear();
        frame::encode_frame(msg, &mut self.buf)?;
        let written = self.inner.write_all(&self.buf).await;
        if written.is_ok() {
            self.written += self.buf.len() as u64;
        }
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::with_capacity(READ_CHUNK);
        }
        Ok(written?)
    }

    pub async fn flush(&mut self) -> Result<(), WireError> {
        Ok(self.inner.flush().await?)
    }

    /// Flush and close the write direction (TLS: sends close_notify).
    pub async fn shutdown(&mut self) -> Result<(), WireError> {
        Ok(self.inner.shutdown().await?)
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Split a stream into a reader of `In` and a writer of `Out`, usable from
/// separate tasks.
pub fn split<S, In, Out>(
    stream: S,
) -> (FrameReader<ReadHalf<S>, In>, FrameWriter<WriteHalf<S>, Out>)
where
    S: AsyncRead + AsyncWrite,
    In: DeserializeOwned,
    Out: Serialize,
{
    let (r, w) = tokio::io::split(stream);
    (FrameReader::new(r), FrameWriter::new(w))
}
