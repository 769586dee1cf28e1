//! The sender's state machine: a bounded buffer of encoded records, batches
//! cut by size or age, one batch in flight, retries with exponential backoff.
//!
//! Pure (the clock is a parameter), so the accounting rule is testable:
//! every record handed to [`Shipper::push`] ends exactly once as
//! *delivered* (the collector answered 2xx for its batch) or *dropped*
//! (buffer full, batch rejected with a non-retryable status, or attempts
//! exhausted), and until then it is *held* (buffered, in flight or waiting
//! for a retry). `pushed == delivered + dropped + held` at every step.
//!
//! Retries resend the same batch with the same id, so a collector that did
//! store a batch whose answer got lost can recognise the duplicate.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub flush_interval_ns: u64,
    pub buffer_max_records: usize,
    pub buffer_max_bytes: usize,
    /// 0 = unlimited.
    pub max_attempts: u32,
    pub backoff_initial_ns: u64,
    pub backoff_max_ns: u64,
}

impl Limits {
    pub fn from_config(c: &crate::config::HttpSink) -> Self {
        const MS: u64 = 1_000_000;
        Limits {
            batch_max_records: c.batch_max_records,
            batch_max_bytes: c.batch_max_bytes,
            flush_interval_ns: c.flush_interval_ms.saturating_mul(MS),
            buffer_max_records: c.buffer_max_records,
            buffer_max_bytes: c.buffer_max_bytes,
            max_attempts: c.max_attempts,
            backoff_initial_ns: c.backoff_initial_ms.saturating_mul(MS),
            backoff_max_ns: c.backoff_max_ms.saturating_mul(MS),
        }
    }
}

/// A batch of records; `attempt` counts sends so far (1 on the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: u64,
    pub records: Vec<String>,
    pub bytes: usize,
    pub attempt: u32,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    Delivered,
    /// Transport failure, timeout, 5xx, 408, 429: worth another attempt.
    Retryable,
    /// Any other non-2xx: the collector refuses this batch for good.
    Rejected,
}

/// What became of the in-flight batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Delivered {
        records: usize,
    },
    RetryAt {
        at_ns: u64,
        attempt: u32,
    },
    Dropped {
        records: usize,
        reason: DropReason,
    },
    /// No batch with that id was in flight (a late or duplicate answer).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    BufferFull,
    Rejected,
    AttemptsExhausted,
}

#[derive(Debug)]
pub struct Shipper {
    limits: Limits,
    /// Distinguishes this sender's batch ids from other VMs' (high 24 bits).
    id_prefix: u64,
    next_seq: u64,
    buffer: VecDeque<String>,
    buffer_bytes: usize,
    /// When the oldest buffered record arrived.
    oldest_ns: Option<u64>,
    in_flight: Option<Batch>,
    /// A failed batch and when to send it again.
    waiting: Option<(Batch, u64)>,
}

impl Shipper {
    pub fn new(limits: Limits, instance: u64) -> Self {
        Shipper {
            limits,
            id_prefix: (instance & 0xff_ffff) << 40,
            next_seq: 1,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            oldest_ns: None,
            in_flight: None,
            waiting: None,
        }
    }

    /// Records held: buffered, in flight and waiting for a retry.
    pub fn held(&self) -> usize {
        self.buffer.len()
            + self.in_flight.as_ref().map_or(0, |b| b.records.len())
            + self.waiting.as_ref().map_or(0, |(b, _)| b.records.len())
    }

    fn held_bytes(&self) -> usize {
        self.buffer_bytes
            + self.in_flight.as_ref().map_or(0, |b| b.bytes)
            + self.waiting.as_ref().map_or(0, |(b, _)| b.bytes)
    }

    pub fn in_flight(&self) -> Option<&Batch> {
        self.in_flight.as_ref()
    }

    /// Everything held, oldest first (in flight, waiting, buffered), and
    /// nothing held after: for handing the records to another sender.
    pub fn take_all(&mut self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.held());
        out.extend(self.in_flight.take().into_iter().flat_map(|b| b.records));
        out.extend(self.waiting.take().into_iter().flat_map(|(b, _)| b.records));
        out.extend(self.buffer.drain(..));
        self.buffer_bytes = 0;
        self.oldest_ns = None;
        out
    }

    /// Takes a record; `false` when the buffer is full and it was dropped
    /// (the caller counts it).
    pub fn push(&mut self, record: String, now_ns: u64) -> bool {
        if self.held() >= self.limits.buffer_max_records
            || self.held_bytes() + record.len() > self.limits.buffer_max_bytes
        {
            return false;
        }
        self.buffer_bytes += record.len();
        self.buffer.push_back(record);
        self.oldest_ns.get_or_insert(now_ns);
        true
    }

    /// The batch to send now, if any; it is in flight until [`Shipper::complete`].
    /// A waiting retry goes first (and blocks new batches while it backs off,
    /// so a down collector is not hammered); otherwise a batch is cut when the
    /// buffer holds a full one or its oldest record is `flush_interval` old.
    pub fn next_batch(&mut self, now_ns: u64) -> Option<&Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some((_, at)) = &self.waiting {
            if now_ns < *at {
                return None;
            }
            let (mut batch, _) = self.waiting.take()?;
            batch.attempt += 1;
            self.in_flight = Some(batch);
            return self.in_flight.as_ref();
        }
        if self.buffer.is_empty() {
            return None;
        }
        let full = self.buffer.len() >= self.limits.batch_max_records
            || self.buffer_bytes >= self.limits.batch_max_bytes;
        let old = self
            .oldest_ns
            .is_some_and(|t| now_ns.saturating_sub(t) >= self.limits.flush_interval_ns);
        if !full && !old {
            return None;
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        while let Some(r) = self.buffer.front() {
            let fits = records.is_empty()
                || (records.len() < self.limits.batch_max_records
                    && bytes + r.len() <= self.limits.batch_max_bytes);
            if !fits {
                break;
            }
            let Some(r) = self.buffer.pop_front() else {
                break;
            };
            bytes += r.len();
            records.push(r);
        }
        self.buffer_bytes -= bytes;
        // The rest arrived later than the cut ones; their exact age is not
        // kept, so they wait at most one more interval.
        self.oldest_ns = (!self.buffer.is_empty()).then_some(now_ns);
        let id = self.id_prefix | (self.next_seq & 0xff_ffff_ffff);
        self.next_seq += 1;
        self.in_flight = Some(Batch {
            id,
            records,
            bytes,
            attempt: 1,
        });
        self.in_flight.as_ref()
    }

    /// Ends the in-flight batch `id`.
    pub fn complete(&mut self, id: u64, result: SendResult, now_ns: u64) -> Completion {
        if self.in_flight.as_ref().map(|b| b.id) != Some(id) {
            return Completion::Unknown;
        }
        let Some(batch) = self.in_flight.take() else {
            return Completion::Unknown;
        };
        let records = batch.records.len();
        match result {
            SendResult::Delivered => Completion::Delivered { records },
            SendResult::Rejected => Completion::Dropped {
                records,
                reason: DropReason::Rejected,
            },
            SendResult::Retryable
                if self.limits.max_attempts > 0 && batch.attempt >= self.limits.max_attempts =>
            {
                Completion::Dropped {
                    records,
                    reason: DropReason::AttemptsExhausted,
                }
            }
            SendResult::Retryable => {
                let at_ns = now_ns.saturating_add(self.backoff(batch.id, batch.attempt));
                let attempt = batch.attempt;
                self.waiting = Some((batch, at_ns));
                Completion::RetryAt { at_ns, attempt }
            }
        }
    }

    /// Delay after failed attempt `attempt` (1-based): initial × 2^(n-1),
    /// capped, with ±20 % jitter derived from the batch id so senders in
    /// several Envoys do not retry in lockstep.
    pub fn backoff(&self, id: u64, attempt: u32) -> u64 {
        let exp = attempt.saturating_sub(1).min(32);
        let base = self
            .limits
            .backoff_initial_ns
            .saturating_mul(1u64 << exp)
            .min(self.limits.backoff_max_ns);
        let mix = (id ^ u64::from(attempt))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17);
        let jitter = (mix % 401) as i64 - 200; // -200..=200 per mille
        let delta = (base as i128 * i128::from(jitter) / 1000) as i64;
        base.saturating_add_signed(delta).max(1)
    }
}

/// Classifies a collector answer by HTTP status (`None`: no answer at all).
pub fn classify(status: Option<u16>) -> SendResult {
    match status {
        Some(200..=299) => SendResult::Delivered,
        None | Some(408 | 429 | 500..) => SendResult::Retryable,
        Some(_) => SendResult::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limits() -> Limits {
        Limits {
            batch_max_records: 3,
            batch_max_bytes: 1000,
            flush_interval_ns: 100 * MS,
            buffer_max_records: 10,
            buffer_max_bytes: 10_000,
            max_attempts: 0,
            backoff_initial_ns: 10 * MS,
            backoff_max_ns: 80 * MS,
        }
    }

    fn rec(i: usize) -> String {
        format!("{{\"i\":{i}}}")
    }

    #[test]
    fn cuts_by_size_then_by_age() {
        let mut s = Shipper::new(limits(), 7);
        for i in 0..4 {
            assert!(s.push(rec(i), 0));
        }
        let b = s.next_batch(0).unwrap().clone();
        assert_eq!(b.records, vec![rec(0), rec(1), rec(2)]);
        assert_eq!(b.id >> 40, 7);
        assert!(s.next_batch(0).is_none(), "one in flight at a time");
        assert_eq!(
            s.complete(b.id, SendResult::Delivered, 1),
            Completion::Delivered { records: 3 }
        );
        assert!(s.next_batch(50 * MS).is_none(), "one record, not old yet");
        let b = s.next_batch(100 * MS).unwrap().clone();
        assert_eq!(b.records, vec![rec(3)]);
        assert_eq!(s.held(), 1);
    }

    #[test]
    fn byte_limit_cuts_batches() {
        let mut l = limits();
        l.batch_max_bytes = 16;
        l.batch_max_records = 100;
        let mut s = Shipper::new(l, 1);
        for i in 0..3 {
            s.push(rec(i), 0); // 7 bytes each
        }
        let b = s.next_batch(0).unwrap().clone();
        assert_eq!(b.records.len(), 2);
        // A single record larger than the limit still goes, alone.
        let mut s = Shipper::new(l, 1);
        s.push("x".repeat(40), 0);
        assert_eq!(s.next_batch(0).unwrap().records.len(), 1);
    }

    #[test]
    fn retries_same_batch_with_growing_backoff() {
        let mut s = Shipper::new(limits(), 1);
        for i in 0..3 {
            s.push(rec(i), 0);
        }
        let id = s.next_batch(0).unwrap().id;
        let mut now = 0;
        let mut delays = Vec::new();
        for attempt in 1..=6 {
            let Completion::RetryAt { at_ns, attempt: a } =
                s.complete(id, SendResult::Retryable, now)
            else {
                panic!()
            };
            assert_eq!(a, attempt);
            delays.push(at_ns - now);
            assert!(s.next_batch(at_ns - 1).is_none(), "backing off");
            s.push(rec(10 + attempt as usize), at_ns - 1);
            now = at_ns;
            let b = s.next_batch(now).unwrap();
            assert_eq!(b.id, id, "same batch, same id");
            assert_eq!(b.attempt, attempt + 1);
        }
        // 10, 20, 40, 80, 80, 80 ms ± 20 %.
        for (d, base) in delays.iter().zip([10, 20, 40, 80, 80, 80]) {
            let base = base * MS;
            assert!(*d >= base * 8 / 10 && *d <= base * 12 / 10, "{delays:?}");
        }
        assert_eq!(
            s.complete(id, SendResult::Delivered, now),
            Completion::Delivered { records: 3 }
        );
        assert_eq!(s.held(), 6);
    }

    #[test]
    fn attempts_and_rejections_drop_with_a_reason() {
        let mut l = limits();
        l.max_attempts = 2;
        let mut s = Shipper::new(l, 1);
        for i in 0..6 {
            s.push(rec(i), 0);
        }
        let id = s.next_batch(0).unwrap().id;
        assert!(matches!(
            s.complete(id, SendResult::Retryable, 0),
            Completion::RetryAt { .. }
        ));
        let id = s.next_batch(u64::MAX / 2).unwrap().id;
        assert_eq!(
            s.complete(id, SendResult::Retryable, 0),
            Completion::Dropped {
                records: 3,
                reason: DropReason::AttemptsExhausted
            }
        );
        let id = s.next_batch(0).unwrap().id;
        assert_eq!(
            s.complete(id, SendResult::Rejected, 0),
            Completion::Dropped {
                records: 3,
                reason: DropReason::Rejected
            }
        );
        assert_eq!(
            s.complete(id, SendResult::Delivered, 0),
            Completion::Unknown
        );
    }

    #[test]
    fn buffer_bound_counts_everything_held() {
        let mut s = Shipper::new(limits(), 1);
        for i in 0..10 {
            assert!(s.push(rec(i), 0));
        }
        assert!(!s.push(rec(10), 0), "full");
        let id = s.next_batch(0).unwrap().id;
        assert!(!s.push(rec(11), 0), "in-flight records still count");
        s.complete(id, SendResult::Delivered, 0);
        assert!(s.push(rec(12), 0));
        let mut l = limits();
        l.buffer_max_bytes = 20;
        let mut s = Shipper::new(l, 1);
        assert!(s.push(rec(1), 0) && s.push(rec(2), 0));
        assert!(!s.push(rec(3), 0), "bytes bound");
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Some(204)), SendResult::Delivered);
        assert_eq!(classify(None), SendResult::Retryable);
        for s in [408, 429, 500, 503, 504] {
            assert_eq!(classify(Some(s)), SendResult::Retryable, "{s}");
        }
        for s in [400, 404, 413] {
            assert_eq!(classify(Some(s)), SendResult::Rejected, "{s}");
        }
    }

    /// Random pushes, cuts and outcomes: every record is accounted for
    /// exactly once, and delivered records are exactly those of delivered
    /// batches, each once.
    #[test]
    fn every_record_is_delivered_or_dropped_exactly_once() {
        let mut rng = crate::testutil::Rng(0xdead_beef);
        for round in 0..50 {
            let mut l = limits();
            l.max_attempts = (round % 4) as u32;
            l.buffer_max_records = 5 + round % 20;
            let mut s = Shipper::new(l, round as u64);
            let (mut pushed, mut delivered, mut dropped) = (0usize, 0usize, 0usize);
            let mut seen = std::collections::HashSet::new();
            let mut now = 0u64;
            for step in 0..2_000 {
                now += rng.next() % (30 * MS);
                match rng.next() % 4 {
                    0 | 1 => {
                        pushed += 1;
                        if !s.push(format!("r{round}-{step}"), now) {
                            dropped += 1;
                        }
                    }
                    2 => {
                        let _ = s.next_batch(now);
                    }
                    _ => {
                        let Some(b) = s.in_flight().cloned() else {
                            continue;
                        };
                        let result = match rng.next() % 5 {
                            0 | 1 => SendResult::Delivered,
                            2 | 3 => SendResult::Retryable,
                            _ => SendResult::Rejected,
                        };
                        match s.complete(b.id, result, now) {
                            Completion::Delivered { records } => {
                                delivered += records;
                                for r in b.records {
                                    assert!(seen.insert(r), "delivered twice");
                                }
                            }
                            Completion::Dropped { records, .. } => dropped += records,
                            Completion::RetryAt { .. } => {}
                            Completion::Unknown => panic!("in-flight batch unknown"),
                        }
                    }
                }
                assert_eq!(
                    pushed,
                    delivered + dropped + s.held(),
                    "round {round} step {step}"
                );
            }
        }
    }
}
