//! Tests of the wire format: round trips of every message, and hostile bytes
//! (random, mutated, truncated, oversized) against the decoder and the
//! reader, with allocations measured.

use super::alloc_probe::measure;
use super::*;
use crate::model::{Change, ChangeOp, Epoch, MemberId, Position, Role, RowImage};
use crate::tables::{TableName, Value};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngSeed};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A fixed seed unless `PROPTEST_RNG_SEED` says otherwise, printed so a
/// failure can be replayed.
fn pt_config() -> PtConfig {
    let mut c = PtConfig::default();
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(0x0057_0DE5);
    }
    c.failure_persistence = None;
    eprintln!("proptest seed: {} (PROPTEST_RNG_SEED)", c.rng_seed);
    c
}

fn arb_position() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(e, s)| Position::new(e, s))
}
fn arb_member() -> impl Strategy<Value = MemberId> {
    "[a-z][a-z0-9_-]{0,10}".prop_map(MemberId::new)
}
fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Active),
        Just(Role::Passive),
        Just(Role::Candidate),
        Just(Role::Fenced),
        Just(Role::Witness),
    ]
}
fn arb_text() -> impl Strategy<Value = String> {
    ".{0,24}"
}
fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Real),
        any::<bool>().prop_map(Value::Bool),
        arb_text().prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
    ]
}
fn arb_table() -> impl Strategy<Value = TableName> {
    "[a-z_][a-z0-9_]{0,11}(\\.[a-z_][a-z0-9_]{0,11})?".prop_map(TableName::new)
}
fn arb_row() -> impl Strategy<Value = RowImage> {
    (
        arb_table(),
        any::<u32>(),
        proptest::collection::vec(arb_value(), 0..12),
    )
        .prop_map(|(table, key_len, values)| RowImage {
            table,
            key_len,
            values,
        })
}
fn arb_change() -> impl Strategy<Value = Change> {
    let op = prop_oneof![
        arb_row().prop_map(ChangeOp::Upsert),
        (arb_table(), proptest::collection::vec(arb_value(), 0..4))
            .prop_map(|(table, key)| ChangeOp::Delete { table, key }),
    ];
    (arb_position(), op).prop_map(|(pos, op)| Change { pos, op })
}
fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        arb_text(),
        arb_member(),
        arb_role(),
        any::<u64>(),
        arb_position(),
        any::<bool>(),
    )
        .prop_map(
            |(protocol, cluster, member, role, epoch, position, want_snapshot)| Hello {
                protocol,
                cluster,
                member,
                role,
                epoch: Epoch(epoch),
                position,
                want_snapshot,
                schema: None,
            },
        )
}
fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        any::<u64>(),
        arb_member(),
        arb_role(),
        arb_position(),
        any::<i64>(),
    )
        .prop_map(|(epoch, member, role, position, sent_at_ms)| Heartbeat {
            epoch: Epoch(epoch),
            member,
            role,
            position,
            sent_at_ms,
        })
}
fn arb_client() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        arb_hello().prop_map(ClientMsg::Hello),
        arb_position().prop_map(|applied| ClientMsg::Ack { applied }),
        arb_heartbeat().prop_map(ClientMsg::Heartbeat),
    ]
}
fn arb_server() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        arb_hello().prop_map(ServerMsg::Welcome),
        arb_text().prop_map(|reason| ServerMsg::Refuse { reason }),
        (
            proptest::collection::vec(arb_change(), 0..8),
            any::<bool>(),
            arb_position(),
            any::<i64>()
        )
            .prop_map(
                |(changes, commit, head, sent_at_ms)| ServerMsg::Batch(Batch {
                    changes,
                    commit,
                    head,
                    sent_at_ms,
                })
            ),
        arb_heartbeat().prop_map(ServerMsg::Heartbeat),
        (
            arb_position(),
            any::<u64>(),
            arb_text(),
            any::<u64>(),
            arb_text()
        )
            .prop_map(|(position, rows_total, reason, version, sql)| {
                ServerMsg::SnapshotBegin(SnapshotBegin {
                    position,
                    rows_total,
                    reason,
                    schema: vec![crate::model::SchemaChange {
                        version,
                        sqlite: sql.clone(),
                        postgres: sql,
                        fingerprint: "0f1e2d3c4b5a6978".into(),
                    }],
                })
            }),
        proptest::collection::vec(arb_row(), 0..8)
            .prop_map(|rows| ServerMsg::SnapshotChunk { rows }),
        any::<u64>().prop_map(|rows| ServerMsg::SnapshotEnd { rows }),
        arb_position().prop_map(|position| ServerMsg::ChecksumMark { position }),
        proptest::collection::vec(
            (
                any::<u64>(),
                arb_member(),
                arb_position(),
                any::<i64>(),
                arb_text()
            ),
            0..4
        )
        .prop_map(|v| ServerMsg::History(
            v.into_iter()
                .map(
                    |(e, active, start, at_ms, reason)| crate::wire::EpochEntry {
                        epoch: Epoch(e),
                        active,
                        start,
                        at_ms,
                        reason,
                    }
                )
                .collect()
        )),
    ]
}

fn frame_of<M: serde::Serialize>(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(m, &mut out).unwrap();
    out
}

/// Read every frame from `bytes` as `M` until the end or the first error.
fn read_all<M: serde::de::DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    bytes: &[u8],
) -> (Vec<M>, Option<WireError>) {
    rt.block_on(async {
        let mut r = FrameReader::<_, M>::new(bytes);
        let mut got = Vec::new();
        loop {
            match r.recv().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Small hostile inputs must not make the decoder allocate on the strength of
/// a length they announce: serde's cautious preallocation caps a container at
/// 1 MiB, far below the frame limit.
const SMALL_INPUT_ALLOC_BOUND: usize = 2 * 1024 * 1024;

proptest! {
    #![proptest_config(pt_config())]

    #[test]
    fn every_client_message_round_trips(msgs in proptest::collection::vec(arb_client(), 1..6)) {
        let rt = runtime();
        let mut bytes = Vec::new();
        for m in &msgs {
            let one = frame_of(m);
            let (back, used) = decode_frame::<ClientMsg>(&one).unwrap().unwrap();
            prop_assert_eq!(used, one.len());
            prop_assert_eq!(&back, m);
            bytes.extend_from_slice(&one);
        }
        let (got, err) = read_all::<ClientMsg>(&rt, &bytes);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn every_server_message_round_trips(msgs in proptest::collection::vec(arb_server(), 1..6)) {
        let rt = runtime();
        let mut bytes = Vec::new();
        for m in &msgs {
            let one = frame_of(m);
            let (back, used) = decode_frame::<ServerMsg>(&one).unwrap().unwrap();
            prop_assert_eq!(used, one.len());
            prop_assert_eq!(&back, m);
            bytes.extend_from_slice(&one);
        }
        let (got, err) = read_all::<ServerMsg>(&rt, &bytes);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn random_bytes_never_panic_nor_allocate_big(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let rt = runtime();
        let (_, a) = measure(|| {
            let _ = decode_frame::<ServerMsg>(&bytes);
            let _ = decode_frame::<ClientMsg>(&bytes);
            let _ = read_all::<ServerMsg>(&rt, &bytes);
            let _ = read_all::<ClientMsg>(&rt, &bytes);
        });
        prop_assert!(a.largest <= SMALL_INPUT_ALLOC_BOUND, "{:?}", a);
        prop_assert!(a.peak_live <= MAX_FRAME_BYTES, "{:?}", a);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let rt = runtime();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let (_, a) = measure(|| {
            let _ = decode_frame::<ServerMsg>(&bytes);
            let _ = read_all::<ClientMsg>(&rt, &bytes);
        });
        prop_assert!(a.largest <= SMALL_INPUT_ALLOC_BOUND, "{:?}", a);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        msg in arb_server(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let rt = runtime();
        let mut bytes = frame_of(&msg);
        for (at, x) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x | 1;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let (_, a) = measure(|| {
            let _ = decode_frame::<ServerMsg>(&bytes);
            let (_, err) = read_all::<ServerMsg>(&rt, &bytes);
            // Whatever it was, a failure is an error value.
            drop(err);
        });
        prop_assert!(a.largest <= SMALL_INPUT_ALLOC_BOUND, "{:?}", a);
    }
}

#[test]
fn clean_end_between_frames_is_none_and_mid_frame_is_truncated() {
    let rt = runtime();
    let hb = ClientMsg::Ack {
        applied: Position::new(1, 2),
    };
    let one = frame_of(&hb);
    let (got, err) = read_all::<ClientMsg>(&rt, &[]);
    assert!(got.is_empty() && err.is_none());

    let (got, err) = read_all::<ClientMsg>(&rt, &one);
    assert_eq!(got, vec![hb.clone()]);
    assert!(err.is_none());

    // Inside the header, then inside the body.
    for cut in [2, one.len() - 1] {
        let mut two = one.clone();
        two.extend_from_slice(&one[..cut]);
        let (got, err) = read_all::<ClientMsg>(&rt, &two);
        assert_eq!(got, vec![hb.clone()]);
        match err {
            Some(WireError::Truncated { have, want }) => {
                assert_eq!(have, cut);
                assert!(want > have);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_and_an_empty_body_are_malformed() {
    let mut f = frame_of(&ClientMsg::Ack {
        applied: Position::new(1, 2),
    });
    let body_len = u32::from_be_bytes(f[..4].try_into().unwrap()) + 1;
    f[..4].copy_from_slice(&body_len.to_be_bytes());
    f.push(0);
    let err = decode_frame::<ClientMsg>(&f).unwrap_err();
    assert!(
        matches!(err, WireError::TrailingBytes { trailing: 1 }),
        "{err}"
    );
    assert!(err.is_malformed());

    let err = decode_frame::<ClientMsg>(&[0, 0, 0, 0]).unwrap_err();
    assert!(matches!(err, WireError::Decode(_)), "{err}");
}

#[tokio::test]
async fn a_4_gib_header_is_refused_from_the_header_alone() {
    let (mut tx, rx) = tokio::io::duplex(64);
    // The writer stays open: the reader must not wait for the body.
    tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut r = FrameReader::<_, ServerMsg>::new(rx);
    let (res, a) = {
        // The probe is per thread; current-thread runtime polls here.
        let fut = tokio::time::timeout(Duration::from_secs(5), r.recv());
        let mut out = None;
        let (_, a) = measure(|| {
            out = Some(futures_util::FutureExt::now_or_never(fut));
        });
        (out, a)
    };
    match res.flatten() {
        Some(Ok(Err(WireError::Oversized { len, max }))) => {
            assert_eq!(len, u64::from(u32::MAX));
            assert_eq!(max, MAX_FRAME_BYTES);
        }
        other => panic!("expected Oversized at once, got {other:?}"),
    }
    assert!(a.largest < 64 * 1024, "{a:?}");
    drop(tx);
}

#[tokio::test]
async fn one_byte_over_the_limit_is_refused_and_the_limit_itself_is_not() {
    let over = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
    assert!(matches!(
        decode_frame::<ServerMsg>(&over),
        Err(WireError::Oversized { .. })
    ));
    let at = (MAX_FRAME_BYTES as u32).to_be_bytes();
    assert!(matches!(decode_frame::<ServerMsg>(&at), Ok(None)));
}

#[tokio::test]
async fn a_message_over_the_limit_is_not_sent() {
    let big = ServerMsg::Batch(Batch {
        changes: vec![Change {
            pos: Position::new(1, 1),
            op: ChangeOp::Upsert(RowImage::new(
                TableName::new("keys"),
                1,
                vec![
                    Value::Text("k".into()),
                    Value::Bytes(vec![7; MAX_FRAME_BYTES + 1]),
                ],
            )),
        }],
        commit: true,
        head: Position::new(1, 1),
        sent_at_ms: 0,
    });
    let mut w = FrameWriter::<_, ServerMsg>::new(Vec::new());
    let err = w.send(&big).await.unwrap_err();
    assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
    assert!(w.get_ref().is_empty(), "nothing may be written");
}

#[tokio::test]
async fn recv_is_cancel_safe_and_halves_work_from_separate_tasks() {
    let (a, b) = tokio::io::duplex(1024);
    let (mut a_rx, mut a_tx) = split::<_, ServerMsg, ClientMsg>(a);
    let (_b_rx, b_tx) = split::<_, ClientMsg, ServerMsg>(b);
    let mut raw = b_tx.into_inner();

    let msg = ServerMsg::Refuse {
        reason: "x".repeat(100),
    };
    let bytes = frame_of(&msg);
    raw.write_all(&bytes[..10]).await.unwrap();
    // Cancelled while half a frame is buffered...
    let early = tokio::time::timeout(Duration::from_millis(50), a_rx.recv()).await;
    assert!(early.is_err(), "no whole frame yet");
    raw.write_all(&bytes[10..]).await.unwrap();
    // ...and the next call still returns the whole message.
    let reader = tokio::spawn(async move { a_rx.recv().await });
    let writer = tokio::spawn(async move {
        a_tx.send(&ClientMsg::Ack {
            applied: Position::new(3, 4),
        })
        .await
    });
    writer.await.unwrap().unwrap();
    assert_eq!(reader.await.unwrap().unwrap(), Some(msg));
}

#[test]
fn the_probe_sees_allocations() {
    let (v, a) = measure(|| vec![1u8; 3 << 20]);
    assert!(a.largest >= 3 << 20, "{a:?}");
    assert!(a.peak_live >= 3 << 20, "{a:?}");
    drop(v);
}

#[test]
fn huge_lengths_inside_a_body_are_errors_without_big_allocations() {
    let huge = [0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    // ServerMsg::Refuse (variant 1) with a string length, ServerMsg::Batch
    // (variant 2) with a change count, each announcing ~2^63 items.
    for variant in [1u8, 2u8] {
        let mut body = vec![variant];
        body.extend_from_slice(&huge);
        body.extend_from_slice(&[0; 32]);
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        let (res, a) = measure(|| decode_frame::<ServerMsg>(&f).map(|_| ()));
        let err = res.unwrap_err();
        assert!(err.is_malformed(), "variant {variant}: {err}");
        assert!(
            a.largest <= SMALL_INPUT_ALLOC_BOUND,
            "variant {variant}: {a:?}"
        );
    }
}
