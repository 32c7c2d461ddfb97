//! The on-disk record format. A segment starts with an 8-byte magic (format version) and holds
//! records `[len: u32 LE][crc32 of payload: u32 LE][payload]`, one per event. The payload is the
//! event encoded with postcard (a compact serde format; event variants are only ever appended,
//! so old logs stay readable). The same framing carries any serde value ([`encode_value`],
//! [`decode_value`]): the journal of recorded inputs (`crate::journal`) uses it too.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::events::Event;

/// First bytes of every segment: "DSPLOG", format version 1.
pub(crate) const MAGIC: &[u8; 8] = b"DSPLOG\x00\x01";
/// `[len][crc]` before each payload.
pub(crate) const RECORD_HEADER: usize = 8;
/// No event encodes anywhere near this; a larger length is corruption.
pub(crate) const MAX_RECORD: usize = 1 << 20;

/// Encodes one record (header + payload) onto `out`.
pub fn encode_record(event: &Event, out: &mut Vec<u8>) {
    encode_value(event, out);
}

/// Encodes one record of any serde value (header + postcard payload) onto `out`.
pub fn encode_value<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    // Serializing plain data into a Vec cannot fail.
    let payload = postcard::to_extend(value, std::mem::take(out))
        .expect("postcard encodes plain data into a Vec");
    *out = payload;
    let len = (out.len() - start - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What a record at some position turned out to be.
#[derive(Debug)]
pub enum Decoded {
    /// A good event and the record's total size.
    Event(Event, usize),
    /// The bytes end before the record does (a torn write, if at the end of the log).
    Truncated,
    /// The record is complete but wrong.
    Bad(String),
}

/// Decodes the record at the start of `bytes` (recovery and cursors call it on every record;
/// the fuzz tests feed it arbitrary bytes). Never panics.
pub fn decode_record(bytes: &[u8]) -> Decoded {
    match decode_value::<Event>(bytes) {
        Frame::Value(event, size) => Decoded::Event(event, size),
        Frame::Truncated => Decoded::Truncated,
        Frame::Bad(why) => Decoded::Bad(why),
    }
}

/// What a record of any serde value turned out to be (see [`Decoded`]).
pub(crate) enum Frame<T> {
    /// A good value and the record's total size.
    Value(T, usize),
    /// The bytes end before the record does.
    Truncated,
    /// The record is complete but wrong.
    Bad(String),
}

/// Decodes the record at the start of `bytes` as a `T`.
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Frame<T> {
    if bytes.len() < RECORD_HEADER {
        return Frame::Truncated;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 || len > MAX_RECORD {
        return Frame::Bad(format!("impossible record length {len}"));
    }
    let Some(payload) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Frame::Truncated;
    };
    if crc32fast::hash(payload) != crc {
        return Frame::Bad("checksum mismatch".into());
    }
    match postcard::from_bytes::<T>(payload) {
        Ok(value) => Frame::Value(value, RECORD_HEADER + len),
        Err(e) => Frame::Bad(format!("undecodable record: {e}")),
    }
}

/// Whether a record's declared length reaches at least the end of `bytes`.
pub(crate) fn record_reaches_end(bytes: &[u8]) -> bool {
    if bytes.len() < RECORD_HEADER {
        return true;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    RECORD_HEADER + len >= bytes.len()
}
