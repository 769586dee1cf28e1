//! How tables travel between VMs through shared data (pure parts).
//!
//! Generation scheme: the leader stores a validated table in the slot
//! `<prefix>/table/<generation % 2>`, then bumps the small pointer key
//! `<prefix>/current` (the generation, CAS-protected). Workers read the
//! pointer on every request (one host call; `SharedValue` decodes only when
//! its CAS token changed) and fetch + rebuild only when the generation moved.
//! Two slots bound the keys (Envoy never evicts shared data), and a worker
//! that reads a slot just overwritten by a newer generation still gets a
//! complete table: each slot write is atomic and the blob names its own
//! generation.

use switchyard_sdk::codec::Codec;

pub fn pointer_key(prefix: &str) -> String {
    format!("{prefix}/current")
}

pub fn slot_key(prefix: &str, generation: u64) -> String {
    format!("{prefix}/table/{}", generation % 2)
}

pub fn lease_key(prefix: &str) -> String {
    format!("{prefix}/lease")
}

/// A published table: its generation, the ETag it came with and the JSON
/// document (already validated by the leader; workers parse it again, which
/// also protects against a different plugin version sharing the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub generation: u64,
    pub etag: String,
    pub json: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"DRT1";

impl Codec for Blob {
    fn encode(&self) -> Vec<u8> {
        let etag = self.etag.as_bytes();
        let mut out = Vec::with_capacity(16 + etag.len() + self.json.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.generation.to_le_bytes());
        // ETags longer than u32::MAX do not exist; truncate rather than fail.
        let etag = &etag[..etag.len().min(u32::MAX as usize)];
        out.extend_from_slice(&(etag.len() as u32).to_le_bytes());
        out.extend_from_slice(etag);
        out.extend_from_slice(&self.json);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let generation = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let etag_len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        let etag = rest.get(12..12usize.checked_add(etag_len)?)?;
        let json = rest.get(12 + etag_len..)?;
        Some(Blob {
            generation,
            etag: String::from_utf8(etag.to_vec()).ok()?,
            json: json.to_vec(),
        })
    }
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
    fn blob_round_trip_and_garbage() {
        let b = Blob {
            generation: 42,
            etag: "\"v7\"".into(),
            json: br#"{"virtual_hosts":[]}"#.to_vec(),
        };
        assert_eq!(Blob::decode(&b.encode()), Some(b.clone()));
        assert_eq!(Blob::decode(b"DRT1"), None);
        assert_eq!(Blob::decode(b"nope"), None);
        let mut truncated = b.encode();
        truncated.truncate(14);
        assert_eq!(Blob::decode(&truncated), None);
        let mut huge_etag = b.encode();
        huge_etag[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Blob::decode(&huge_etag), None);
    }

    #[test]
    fn slots_alternate() {
        assert_eq!(slot_key("p", 1), "p/table/1");
        assert_eq!(slot_key("p", 2), "p/table/0");
        assert_eq!(slot_key("p", 3), "p/table/1");
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
