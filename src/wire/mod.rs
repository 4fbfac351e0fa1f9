//! The replication stream's wire format: messages, framing and the codec.
//!
//! Owns: the message types exchanged between members (one enum per direction
//! of a connection), the frame format (4-byte big-endian length + encoded
//! body, at most [`MAX_FRAME_BYTES`]) and the async frame reader/writer.
//! Must never: trust a length from the network before checking it against the
//! limit, panic on bytes from a peer, or know about TLS, sockets or databases
//! (it works over any `AsyncRead`/`AsyncWrite`).
//!
//! The serialisation library is used only in `codec.rs`, so it can be
//! replaced without touching the rest.

mod codec;
pub mod control;
mod frame;
mod messages;
mod stream;

#[cfg(test)]
pub(crate) mod alloc_probe;

pub use frame::{HEADER_BYTES, decode_frame, encode_frame};
pub use messages::{
    Batch, ClientMsg, EpochEntry, HISTORY_MAX, Heartbeat, Hello, PROTOCOL_VERSION, SchemaDesc,
    SchemaHere, ServerMsg, SnapshotBegin,
};
pub use stream::{FrameReader, FrameWriter, split};

/// The largest frame body accepted or sent: 16 MiB. A peer announcing more is
/// refused from the header alone, before any buffer is grown for it.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({have} of {want} bytes received)")]
    Truncated { have: usize, want: usize },
    /// A frame header announced a body over the limit.
    #[error("malformed frame: header announces {len} bytes, the limit is {max}")]
    Oversized { len: u64, max: usize },
    /// The body did not decode as a message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The body decoded, but did not use all of its bytes.
    #[error("malformed frame: {trailing} bytes left after the message")]
    TrailingBytes { trailing: usize },
    /// A message to send does not fit in one frame.
    #[error("message too large to send: more than {max} bytes")]
    TooLarge { max: usize },
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("i/o error on the stream: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// True when the peer sent bytes that are not a valid frame (as opposed
    /// to the connection ending or failing): worth a louder log line, and
    /// never worth retrying the same bytes.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            WireError::Oversized { .. } | WireError::Decode(_) | WireError::TrailingBytes { .. }
        )
    }
}

#[cfg(test)]
mod tests;
