//! The one place that knows the serialisation library (bincode 2, through
//! its serde integration).
//!
//! Owns: turning a message into body bytes and back, with the decode limit
//! set to the frame limit.
//! Must never: leak the library's types into the public API (errors are
//! turned into `WireError` here), or read past the body it is given.

use super::{MAX_FRAME_BYTES, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Standard bincode (variable-length integers, little endian) with a decode
/// limit: no single decode may claim more than a frame's worth of bytes.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// A `Write` over a `Vec` that refuses to grow past a limit, so an oversized
/// message fails while encoding instead of after building a huge buffer.
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limit {
            return Err(std::io::Error::other("frame limit reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Append the encoding of `msg` to `out`; fails with `TooLarge` if it would
/// be longer than `MAX_FRAME_BYTES`.
pub(super) fn encode_into<M: Serialize>(msg: &M, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    let mut w = Bounded {
        out,
        limit: start.saturating_add(MAX_FRAME_BYTES),
    };
    match bincode::serde::encode_into_std_write(msg, &mut w, config()) {
        Ok(_) => Ok(()),
        Err(bincode::error::EncodeError::Io { .. }) => {
            out.truncate(start);
            Err(WireError::TooLarge {
                max: MAX_FRAME_BYTES,
            })
        }
        Err(e) => {
            out.truncate(start);
            Err(WireError::Encode(e.to_string()))
        }
    }
}

/// Decode one message that must fill `body` exactly.
pub(super) fn decode<M: DeserializeOwned>(body: &[u8]) -> Result<M, WireError> {
    let (msg, used) = bincode::serde::decode_from_slice::<M, _>(body, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::TrailingBytes {
            trailing: body.len() - used,
        });
    }
    Ok(msg)
}
