//! The hash chain rules, shared by the logs and the audit tooling.

use amisim_proto::Event;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{Head, LogError, ZERO_HASH};

/// The hash of `event` when it follows an event whose hash is `prev_hash`:
/// `SHA-256(prev_hash || protobuf encoding of event)`, computed over a copy of `event` with
/// `hash` cleared and `prev_hash` set to `prev_hash` (whatever `event` holds in those fields is
/// ignored). `prev_hash` is 32 zero bytes for seq 1.
pub fn hash_event(prev_hash: &[u8], event: &Event) -> [u8; 32] {
    let mut canonical = event.clone();
    canonical.hash.clear();
    canonical.prev_hash.clear();
    canonical.prev_hash.extend_from_slice(prev_hash);
    hash_canonical(&canonical)
}

/// The hash of an event whose `prev_hash` is already set and whose `hash` is empty.
pub(crate) fn hash_canonical(event: &Event) -> [u8; 32] {
    debug_assert!(event.hash.is_empty());
    let mut hasher = Sha256::new();
    hasher.update(&event.prev_hash);
    hasher.update(event.encode_to_vec());
    hasher.finalize().into()
}

/// Verifies a run of events that should carry consecutive seqs from `first_seq` on (0 reads as
/// 1): gapless seqs, every `prev_hash` equal to the previous event's `hash`, every `hash` correct.
///
/// From `first_seq` 1 the first `prev_hash` must be 32 zero bytes. From a later seq the first
/// event's `prev_hash` cannot be checked (its predecessor is not given) and is taken as the
/// anchor; use [`ChainVerifier::resume`] when the predecessor's hash is known.
///
/// Returns the head of the run (seq and hash of its last event; for an empty run seq
/// `first_seq - 1` and [`ZERO_HASH`]), or [`LogError::Corrupt`] naming the first bad seq. A
/// missing event is reported under its own seq (the first seq that is not where it should be).
pub fn verify_events<I>(events: I, first_seq: u64) -> Result<Head, LogError>
where
    I: IntoIterator<Item = Event>,
{
    let mut verifier = ChainVerifier::starting_at(first_seq);
    for event in events {
        verifier.push_owned(event)?;
    }
    Ok(verifier.head())
}

/// Incremental chain verification: feed events in order with [`ChainVerifier::push`].
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    /// Hash the next event's `prev_hash` must equal; `None` when it is not known (the anchor).
    prev: Option<[u8; 32]>,
    head: Head,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// Verifies a log from seq 1 (whose `prev_hash` must be 32 zero bytes).
    pub fn new() -> Self {
        Self::resume(Head::EMPTY)
    }

    /// Verifies the events that follow `after` (seq `after.seq + 1` on, the first one's
    /// `prev_hash` must equal `after.hash`).
    pub fn resume(after: Head) -> Self {
        ChainVerifier {
            next_seq: after.seq.saturating_add(1),
            prev: Some(after.hash),
            head: after,
        }
    }

    /// Verifies events from `first_seq` on (0 reads as 1). From seq 1 this is [`Self::new`];
    /// from a later seq the first event's `prev_hash` is not checked (see [`verify_events`]).
    pub fn starting_at(first_seq: u64) -> Self {
        if first_seq <= 1 {
            return Self::new();
        }
        ChainVerifier {
            next_seq: first_seq,
            prev: None,
            head: Head {
                seq: first_seq - 1,
                hash: ZERO_HASH,
            },
        }
    }

    /// The seq the next pushed event must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Seq and hash of the last event verified so far.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Checks the next event: it must carry [`Self::next_seq`], link to the previous hash and
    /// hash correctly. On error the verifier is unchanged and the error names the bad seq.
    pub fn push(&mut self, event: &Event) -> Result<(), LogError> {
        self.push_owned(event.clone())
    }

    /// [`Self::push`] without copying the event (a replay that folds and verifies in one pass
    /// hands each event over once it has applied it).
    pub fn push_owned(&mut self, mut event: Event) -> Result<(), LogError> {
        let seq = self.next_seq;
        let corrupt = |reason: String| LogError::Corrupt { seq, reason };
        if event.seq != seq {
            return Err(corrupt(format!(
                "expected seq {seq}, found an event with seq {} (missing or out of place)",
                event.seq
            )));
        }
        let prev: [u8; 32] = event.prev_hash.as_slice().try_into().map_err(|_| {
            corrupt(format!(
                "prev_hash has {} bytes, expected 32",
                event.prev_hash.len()
            ))
        })?;
        if let Some(expected) = self.prev {
            if prev != expected {
                return Err(corrupt(format!(
                    "prev_hash {} does not match the hash {} of seq {}",
                    hex::encode(prev),
                    hex::encode(expected),
                    seq - 1
                )));
            }
        }
        let stored = std::mem::take(&mut event.hash);
        let computed = hash_canonical(&event);
        if stored.as_slice() != computed.as_slice() {
            return Err(corrupt(format!(
                "hash mismatch: stored {}, computed {}",
                hex::encode(&stored),
                hex::encode(computed)
            )));
        }
        self.head = Head {
            seq,
            hash: computed,
        };
        self.prev = Some(computed);
        self.next_seq = seq.saturating_add(1);
        Ok(())
    }

    /// The error for a log that ends (or jumps) where [`Self::next_seq`] should have been.
    pub(crate) fn missing(&self, detail: &str) -> LogError {
        LogError::Corrupt {
            seq: self.next_seq,
            reason: format!("missing event: {detail}"),
        }
    }
}

/// Stamps `events` to follow `head`: assigns seqs, `prev_hash` and `hash`. Returns the new head.
pub(crate) fn stamp(head: Head, events: &mut [Event]) -> Head {
    let mut head = head;
    for event in events.iter_mut() {
        event.seq = head.seq + 1;
        event.prev_hash.clear();
        event.prev_hash.extend_from_slice(&head.hash);
        event.hash.clear();
        let hash = hash_canonical(event);
        event.hash.extend_from_slice(&hash);
        head = Head {
            seq: event.seq,
            hash,
        };
    }
    head
}

/// [`stamp`], and each stamped event appended to `out` as field 1 of an `EventBatch` (what
/// `prost::encoding::message::encode(1, event, out)` writes, byte for byte), encoding each
/// event once: the hash covers the event's encoding with `hash` empty, which is the stored
/// encoding without the `hash` field, and `hash` (field 11) comes right before the payload
/// (fields 100 and up). So the envelope and the payload are encoded apart, hashed, and written
/// around the hash. Returns the new head.
pub(crate) fn stamp_encoded(head: Head, events: &mut [Event], out: &mut Vec<u8>) -> Head {
    use prost::encoding::{encode_key, encode_varint, WireType};
    const HASH_TAG: u32 = 11;
    let mut head = head;
    let mut envelope = Vec::new();
    let mut payload_bytes = Vec::new();
    for event in events.iter_mut() {
        event.seq = head.seq + 1;
        event.prev_hash.clear();
        event.prev_hash.extend_from_slice(&head.hash);
        event.hash.clear();
        let payload = event.payload.take();
        envelope.clear();
        event.encode_raw(&mut envelope);
        payload_bytes.clear();
        if let Some(p) = &payload {
            p.encode(&mut payload_bytes);
        }
        event.payload = payload;
        let mut hasher = Sha256::new();
        hasher.update(head.hash);
        hasher.update(&envelope);
        hasher.update(&payload_bytes);
        let hash: [u8; 32] = hasher.finalize().into();
        event.hash.extend_from_slice(&hash);
        // Field 11 as prost writes it: key, length 32, the bytes.
        let hash_field_len = prost::encoding::key_len(HASH_TAG)
            + prost::encoding::encoded_len_varint(hash.len() as u64)
            + hash.len();
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(
            (envelope.len() + hash_field_len + payload_bytes.len()) as u64,
            out,
        );
        out.extend_from_slice(&envelope);
        encode_key(HASH_TAG, WireType::LengthDelimited, out);
        encode_varint(hash.len() as u64, out);
        out.extend_from_slice(&hash);
        out.extend_from_slice(&payload_bytes);
        head = Head {
            seq: event.seq,
            hash,
        };
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use amisim_proto::{event::Payload, ImageAvailable};

    fn ev(i: u64) -> Event {
        Event {
            region: "us-east-1".into(),
            event_id: format!("e-{i}"),
            sim_time_ms: i,
            account_id: "123456789012".into(),
            payload: Some(Payload::ImageAvailable(ImageAvailable {
                image_id: format!("ami-{i:017x}"),
            })),
            ..Default::default()
        }
    }

    fn chain(n: u64) -> Vec<Event> {
        let mut events: Vec<Event> = (1..=n).map(ev).collect();
        stamp(Head::EMPTY, &mut events);
        events
    }

    #[test]
    fn stamp_links_and_hashes() {
        let events = chain(3);
        assert_eq!(events[0].seq, 1);
        assert_eq!(events[0].prev_hash, vec![0u8; 32]);
        for w in events.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        for e in &events {
            assert_eq!(hash_event(&e.prev_hash, e).as_slice(), e.hash.as_slice());
        }
    }

    #[test]
    fn hash_event_ignores_stored_hash_and_prev() {
        let e = chain(1).remove(0);
        let mut other = e.clone();
        other.hash = vec![7; 32];
        other.prev_hash = vec![9; 32];
        assert_eq!(hash_event(&ZERO_HASH, &other), hash_event(&ZERO_HASH, &e));
        assert_ne!(hash_event(&[1; 32], &e), hash_event(&ZERO_HASH, &e));
    }

    #[test]
    fn hash_matches_spec_formula() {
        let e = chain(1).remove(0);
        let mut canonical = e.clone();
        canonical.hash.clear();
        let mut bytes = vec![0u8; 32];
        bytes.extend(canonical.encode_to_vec());
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(e.hash, expected.to_vec());
    }

    #[test]
    fn verify_ok_and_head() {
        let events = chain(5);
        let head = verify_events(events.clone(), 1).unwrap();
        assert_eq!(head.seq, 5);
        assert_eq!(head.hash.to_vec(), events[4].hash);
        // A suffix verifies from its first seq (anchor trusted) ...
        let head2 = verify_events(events[2..].to_vec(), 3).unwrap();
        assert_eq!(head2, head);
        // ... and with a known anchor.
        let mut v = ChainVerifier::resume(Head {
            seq: 2,
            hash: events[1].hash.as_slice().try_into().unwrap(),
        });
        for e in &events[2..] {
            v.push(e).unwrap();
        }
        assert_eq!(v.head(), head);
        assert_eq!(verify_events(Vec::new(), 1).unwrap(), Head::EMPTY);
    }

    fn corrupt_seq(r: Result<Head, LogError>) -> u64 {
        match r {
            Err(LogError::Corrupt { seq, .. }) => seq,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn verify_names_first_bad_seq() {
        let events = chain(6);
        // Gap.
        let mut gap = events.clone();
        gap.remove(3);
        assert_eq!(corrupt_seq(verify_events(gap, 1)), 4);
        // Swap.
        let mut swapped = events.clone();
        swapped.swap(2, 3);
        assert_eq!(corrupt_seq(verify_events(swapped, 1)), 3);
        // Changed content.
        let mut changed = events.clone();
        changed[4].sim_time_ms += 1;
        assert_eq!(corrupt_seq(verify_events(changed, 1)), 5);
        // Changed hash.
        let mut bad_hash = events.clone();
        bad_hash[1].hash[0] ^= 1;
        assert_eq!(corrupt_seq(verify_events(bad_hash, 1)), 2);
        // Re-hashed event whose successor no longer links.
        let mut rehashed = events.clone();
        rehashed[1].sim_time_ms += 1;
        rehashed[1].hash.clear();
        rehashed[1].hash = hash_event(&rehashed[1].prev_hash, &rehashed[1]).to_vec();
        assert_eq!(corrupt_seq(verify_events(rehashed, 1)), 3);
        // Wrong first prev_hash.
        let mut first = events.clone();
        first[0].prev_hash = vec![1; 32];
        assert_eq!(corrupt_seq(verify_events(first, 1)), 1);
        // Short prev_hash.
        let mut short = events;
        short[0].prev_hash = vec![0; 31];
        assert_eq!(corrupt_seq(verify_events(short, 1)), 1);
    }

    #[test]
    fn failed_push_leaves_verifier_unchanged() {
        let events = chain(2);
        let mut v = ChainVerifier::new();
        assert!(v.push(&events[1]).is_err());
        assert_eq!(v.next_seq(), 1);
        v.push(&events[0]).unwrap();
        v.push(&events[1]).unwrap();
        assert_eq!(v.head().seq, 2);
    }

    mod fused {
        use super::*;
        use amisim_proto::{EventRef, ImageRegistered, SnapshotCompleted};
        use proptest::prelude::*;

        fn payload() -> impl Strategy<Value = Option<Payload>> {
            prop_oneof![
                Just(None),
                "[a-z0-9]{0,20}"
                    .prop_map(|id| Some(Payload::ImageAvailable(ImageAvailable { image_id: id }))),
                "[a-z0-9]{0,20}".prop_map(|id| Some(Payload::SnapshotCompleted(
                    SnapshotCompleted { snapshot_id: id }
                ))),
                ("[a-z0-9-]{0,30}", ".{0,300}").prop_map(|(name, description)| Some(
                    Payload::ImageRegistered(ImageRegistered {
                        image_id: "ami-0123456789abcdef0".into(),
                        owner_id: "123456789012".into(),
                        name,
                        description,
                        available_at_ms: 7,
                        ..Default::default()
                    })
                )),
            ]
        }

        fn event() -> impl Strategy<Value = Event> {
            (
                any::<u64>(),
                ".{0,12}",
                "[a-f0-9-]{0,36}",
                any::<u64>(),
                any::<u64>(),
                "[0-9]{0,12}",
                ".{0,40}",
                ".{0,10}",
                proptest::collection::vec(("[a-z0-9-]{0,12}", any::<u64>()), 0..3),
                proptest::collection::vec(any::<u8>(), 0..40),
                payload(),
            )
                .prop_map(
                    |(
                        seq,
                        region,
                        event_id,
                        sim,
                        wall,
                        account,
                        request,
                        correlation,
                        deps,
                        junk,
                        payload,
                    )| Event {
                        // Whatever the caller left in seq, prev_hash and hash is overwritten.
                        seq,
                        region,
                        event_id,
                        sim_time_ms: sim,
                        wall_time_ms: wall,
                        account_id: account,
                        request_id: request,
                        correlation_id: correlation,
                        depends_on: deps
                            .into_iter()
                            .map(|(region, seq)| EventRef { region, seq })
                            .collect(),
                        prev_hash: junk.clone(),
                        hash: junk,
                        payload,
                    },
                )
        }

        proptest! {
            /// The fused path stamps exactly what `stamp` stamps and writes exactly the bytes
            /// prost writes for the stamped events.
            #[test]
            fn stamp_encoded_equals_stamp_then_encode(
                events in proptest::collection::vec(event(), 0..6),
                seq in 0u64..1_000_000,
                hash in any::<[u8; 32]>(),
            ) {
                let head = Head { seq, hash };
                let mut expected = events.clone();
                let expected_head = stamp(head, &mut expected);
                let mut expected_bytes = vec![9u8];
                for e in &expected {
                    prost::encoding::message::encode(1, e, &mut expected_bytes);
                }
                let mut fused = events;
                let mut bytes = vec![9u8];
                let fused_head = stamp_encoded(head, &mut fused, &mut bytes);
                prop_assert_eq!(fused_head, expected_head);
                prop_assert_eq!(&fused, &expected);
                prop_assert_eq!(bytes, expected_bytes);
            }
        }
    }
}
