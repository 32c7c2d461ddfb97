//! The on-disk record format. A segment starts with an 8-byte magic (format version) and holds
//! records `[len: u32 LE][crc32 of payload: u32 LE][payload]`, one per event. The payload is the
//! event encoded with postcard (a compact serde format; event variants are only ever appended,
//! so old logs stay readable).

use crate::events::Event;

/// First bytes of every segment: "DSPLOG", format version 1.
pub(crate) const MAGIC: &[u8; 8] = b"DSPLOG\x00\x01";
/// `[len][crc]` before each payload.
pub(crate) const RECORD_HEADER: usize = 8;
/// No event encodes anywhere near this; a larger length is corruption.
pub(crate) const MAX_RECORD: usize = 1 << 20;

/// Encodes one record (header + payload) onto `out`.
pub fn encode_record(event: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    // Serializing plain data into a Vec cannot fail.
    let payload = postcard::to_extend(event, std::mem::take(out))
        .expect("postcard encodes events into a Vec");
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
    if bytes.len() < RECORD_HEADER {
        return Decoded::Truncated;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 || len > MAX_RECORD {
        return Decoded::Bad(format!("impossible record length {len}"));
    }
    let Some(payload) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Decoded::Truncated;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Bad("checksum mismatch".into());
    }
    match postcard::from_bytes::<Event>(payload) {
        Ok(event) => Decoded::Event(event, RECORD_HEADER + len),
        Err(e) => Decoded::Bad(format!("undecodable event: {e}")),
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
