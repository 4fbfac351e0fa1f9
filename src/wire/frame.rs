//! Frame format: a 4-byte big-endian body length, then the encoded body.
//!
//! Owns: reading and checking the header, splitting a buffer into frames,
//! and building a frame from a message. Pure functions over byte slices; the
//! async reader and writer build on them.
//! Must never: allocate on the strength of a header before checking it
//! against `MAX_FRAME_BYTES`.

use super::{MAX_FRAME_BYTES, WireError, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Length of the frame header.
pub const HEADER_BYTES: usize = 4;

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Split<'a> {
    /// Not a whole frame yet: `frame_len` is the total (header included) the
    /// frame in progress needs, as far as known (just the header while it is
    /// incomplete).
    NeedMore { frame_len: usize },
    /// A whole frame: its body, and how many bytes of the buffer it used.
    Frame { body: &'a [u8], consumed: usize },
}

/// Look at the front of `buf`. An oversized header is an error as soon as
/// its 4 bytes are there, whatever follows.
pub(crate) fn split_frame(buf: &[u8]) -> Result<Split<'_>, WireError> {
    let Some(header) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(Split::NeedMore {
            frame_len: HEADER_BYTES,
        });
    };
    let len = u32::from_be_bytes(*header);
    // u32 always fits in usize on the 32/64-bit targets this runs on; a
    // failed conversion is treated as oversized all the same.
    let body_len = match usize::try_from(len) {
        Ok(n) if n <= MAX_FRAME_BYTES => n,
        _ => {
            return Err(WireError::Oversized {
                len: u64::from(len),
                max: MAX_FRAME_BYTES,
            });
        }
    };
    let frame_len = HEADER_BYTES + body_len;
    match buf.get(HEADER_BYTES..frame_len) {
        Some(body) => Ok(Split::Frame {
            body,
            consumed: frame_len,
        }),
        None => Ok(Split::NeedMore { frame_len }),
    }
}

/// Decode the frame at the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the message and the number of bytes it used.
pub fn decode_frame<M: DeserializeOwned>(buf: &[u8]) -> Result<Option<(M, usize)>, WireError> {
    match split_frame(buf)? {
        Split::NeedMore { .. } => Ok(None),
        Split::Frame { body, consumed } => Ok(Some((codec::decode(body)?, consumed))),
    }
}

/// Append one frame holding `msg` to `out`. On error `out` is unchanged.
pub fn encode_frame<M: Serialize>(msg: &M, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    if let Err(e) = codec::encode_into(msg, out) {
        out.truncate(start);
        return Err(e);
    }
    let body_len = out.len() - start - HEADER_BYTES;
    // encode_into refuses bodies over MAX_FRAME_BYTES (< u32::MAX).
    let Ok(len) = u32::try_from(body_len) else {
        out.truncate(start);
        return Err(WireError::TooLarge {
            max: MAX_FRAME_BYTES,
        });
    };
    out[start..start + HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
