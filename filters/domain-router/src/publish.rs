//! How tables travel between VMs through shared data (pure parts).
//!
//! Generation scheme: the leader stores a validated table in the slot
//! `<prefix>/table/<generation % 2>`, then bumps the small pointer key
//! `<prefix>/current` (the generation, CAS-protected). Workers read the
//! pointer on every request (one host call; `SharedValue` decodes only when
//! its CAS token changed) and fetch + rebuild only when the generation moved.
//! Two slots bound the keys (Envoy never evicts shared data).
//!
//! A slot is a small [`Header`] (generation, ETag, length, chunk count) at
//! the slot key plus the JSON in chunks of [`CHUNK`] bytes at
//! `<slot>/<i>`, each prefixed with its generation. A VM parses the chunks
//! as it reads them, so a large table is never whole in its memory (wasm
//! memory never shrinks below its peak: a whole 11 MiB document next to the
//! index it builds would stay resident in every VM). A chunk of another
//! generation (the slot was overwritten meanwhile) makes the read torn, and
//! the VM tries again later.

use switchyard_sdk::codec::Codec;

/// Bytes of JSON per chunk key: what a VM reads per host call.
pub const CHUNK: usize = switchyard_sdk::config::CHUNK;

pub fn pointer_key(prefix: &str) -> String {
    format!("{prefix}/current")
}

pub fn slot_key(prefix: &str, generation: u64) -> String {
    format!("{prefix}/table/{}", generation % 2)
}

/// Chunk `index` of the slot `generation` is stored in.
pub fn chunk_key(prefix: &str, generation: u64, index: usize) -> String {
    format!("{}/{index}", slot_key(prefix, generation))
}

pub fn lease_key(prefix: &str) -> String {
    format!("{prefix}/lease")
}

/// A published table's header: its generation, the ETag it came with and
/// the JSON document's length (already validated by the leader; workers
/// parse it again, which also protects against a different plugin version
/// sharing the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub generation: u64,
    pub etag: String,
    /// Bytes of JSON, in `len.div_ceil(CHUNK)` chunks.
    pub len: u64,
}

impl Header {
    pub fn chunks(&self) -> usize {
        usize::try_from(self.len.div_ceil(CHUNK as u64)).unwrap_or(usize::MAX)
    }
}

const MAGIC: &[u8; 4] = b"DRT2";

impl Codec for Header {
    fn encode(&self) -> Vec<u8> {
        let etag = self.etag.as_bytes();
        // ETags longer than u32::MAX do not exist; truncate rather than fail.
        let etag = &etag[..etag.len().min(u32::MAX as usize)];
        let mut out = Vec::with_capacity(24 + etag.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(etag.len() as u32).to_le_bytes());
        out.extend_from_slice(etag);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let generation = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let len = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
        let etag_len = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
        let etag = rest.get(20..20usize.checked_add(etag_len)?)?;
        if rest.len() != 20 + etag_len {
            return None;
        }
        Some(Header {
            generation,
            etag: String::from_utf8(etag.to_vec()).ok()?,
            len,
        })
    }
}

/// A chunk as stored: its generation, then its bytes.
pub fn encode_chunk(generation: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A stored chunk's bytes, if it belongs to `generation`.
pub fn chunk_of(generation: u64, stored: &[u8]) -> Option<&[u8]> {
    let (g, bytes) = stored.split_at_checked(8)?;
    (u64::from_le_bytes(g.try_into().ok()?) == generation).then_some(bytes)
}

/// The leader's poll schedule (host clock, ns). Polls start on a fixed
/// cadence measured from the previous start, so a change on the endpoint is
/// fetched at most one period after it happened (plus the fetch itself).
#[derive(Debug, Clone, Default)]
pub struct PollClock {
    next_at: u64,
    in_flight_since: Option<u64>,
}

impl PollClock {
    /// Whether a poll should start now: none in flight (or the one in flight
    /// is overdue by far, i.e. its answer was lost) and its time has come.
    pub fn due(&self, now: u64, stuck_after_ns: u64) -> bool {
        match self.in_flight_since {
            Some(since) if now.saturating_sub(since) < stuck_after_ns => false,
            _ => now >= self.next_at,
        }
    }

    /// A poll starts; the next one is due `interval_ns` later. Callers pass
    /// the poll period minus one tick, since ticks only sample the clock.
    pub fn started(&mut self, now: u64, interval_ns: u64) {
        self.in_flight_since = Some(now);
        self.next_at = now.saturating_add(interval_ns);
    }

    /// The poll ended (any outcome).
    pub fn finished(&mut self) {
        self.in_flight_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_garbage() {
        let h = Header {
            generation: 42,
            etag: "\"v7\"".into(),
            len: 3 * CHUNK as u64 + 1,
        };
        assert_eq!(h.chunks(), 4);
        assert_eq!(Header::decode(&h.encode()), Some(h.clone()));
        assert_eq!(Header::decode(b"DRT2"), None);
        assert_eq!(Header::decode(b"DRT1\0\0\0\0\0\0\0\0"), None);
        assert_eq!(Header::decode(b"nope"), None);
        let mut truncated = h.encode();
        truncated.truncate(22);
        assert_eq!(Header::decode(&truncated), None);
        let mut longer = h.encode();
        longer.push(b'x');
        assert_eq!(Header::decode(&longer), None);
        let mut huge_etag = h.encode();
        huge_etag[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Header::decode(&huge_etag), None);
        let empty = Header { len: 0, ..h };
        assert_eq!(empty.chunks(), 0);
    }

    #[test]
    fn chunks_carry_their_generation() {
        let c = encode_chunk(7, b"{\"a\"");
        assert_eq!(chunk_of(7, &c), Some(&b"{\"a\""[..]));
        assert_eq!(chunk_of(9, &c), None, "overwritten by a newer generation");
        assert_eq!(chunk_of(7, b"short"), None);
        assert_eq!(chunk_of(7, &encode_chunk(7, b"")), Some(&b""[..]));
    }

    #[test]
    fn slots_alternate() {
        assert_eq!(slot_key("p", 1), "p/table/1");
        assert_eq!(slot_key("p", 2), "p/table/0");
        assert_eq!(slot_key("p", 3), "p/table/1");
        assert_eq!(chunk_key("p", 3, 12), "p/table/1/12");
    }

    #[test]
    fn poll_clock() {
        let mut c = PollClock::default();
        assert!(c.due(0, 1000));
        c.started(0, 100);
        assert!(!c.due(150, 1000), "one in flight");
        assert!(c.due(1000, 1000), "lost answer: try again");
        c.finished();
        assert!(!c.due(50, 1000));
        assert!(c.due(100, 1000), "cadence from the previous start");
    }
}
