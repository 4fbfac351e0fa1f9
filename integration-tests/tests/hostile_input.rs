//! Hostile input to the two parsers that take bytes from outside: the member
//! config (file text and `UNDERSTUDY_*` overrides) and the wire decoder
//! (frames from a peer). Neither may panic on anything; config errors always
//! name the file; a frame header over `MAX_FRAME_BYTES` is refused from the
//! header alone.
//!
//! The other misuse cases live beside the code they attack:
//! - TLS misuse (no client cert, wrong CA, wrong member name, plain TCP on
//!   the TLS port): `integration-tests/tests/hostile_replication.rs` and
//!   `src/transport/tests.rs`;
//! - wire allocation bounds under hostile frames: `src/wire/tests.rs`;
//! - HTTP misuse (404, 405, 401, 413, slow clients, no token or key content
//!   in answers or logs): `integration-tests/tests/ops.rs`;
//! - bad command lines and bad config files end to end:
//!   `integration-tests/tests/cli.rs`.
//!
//! Seeds are fixed (`UNDERSTUDY_TEST_SEED` overrides) and printed; case counts
//! are bounded so the file runs in seconds.

use integration_tests::seed;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as PtConfig, RngSeed};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use understudy::config::Config;
use understudy::model::{Change, ChangeOp, Epoch, MemberId, Position, Role};
use understudy::store::conformance::{del, example_catalog, key, project};
use understudy::wire::{
    Batch, ClientMsg, FrameReader, HEADER_BYTES, Heartbeat, Hello, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, ServerMsg, WireError, decode_frame, encode_frame,
};

const EXAMPLE: &str = include_str!("../../config/a.toml");
const CONFIG_PATH: &str = "/etc/understudy/a.toml";

fn pt_config(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed(0x0BAD_C0DE)),
        // Failures are replayed from the printed seed, not from files written
        // into the source tree.
        failure_persistence: None,
        ..PtConfig::default()
    }
}

// ---------------------------------------------------------------- config --

/// Parse, and check the one thing every failure must do: name the file.
fn parse_checked(text: &str, env: &[(String, String)]) {
    if let Err(e) = Config::parse(text, Path::new(CONFIG_PATH), env) {
        assert_eq!(e.file, CONFIG_PATH, "error does not name the file: {e}");
        assert!(e.to_string().contains(CONFIG_PATH), "{e}");
    }
}

/// A TOML value of any type, including ones no key accepts.
fn arb_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("99999999999999999999999999999999".to_string()),
        Just("-9223372036854775809".to_string()),
        Just("18446744073709551616".to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        // Strings, escaped the TOML way (the Debug escapes of Rust strings
        // are close enough that the odd one failing to parse is fine too).
        ".{0,40}".prop_map(|s| format!("{s:?}")),
        Just("\"\"".to_string()),
        Just("\"127.0.0.1:99999\"".to_string()),
        Just("\"[::1]:0\"".to_string()),
        Just("\"sqlite://\"".to_string()),
        Just("\"postgres://\"".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

const SECTIONS: &[&str] = &["database", "replication", "status", "tls", "hooks"];
const KEYS: &[&str] = &[
    "cluster",
    "member",
    "initial_active",
    "auto_failover",
    "witness",
    "no_failover",
    "priority",
    "url",
    "listen",
    "heartbeat_interval_ms",
    "lease_timeout_ms",
    "failover_timeout_ms",
    "max_failover_lag_changes",
    "batch_max_changes",
    "batch_max_bytes",
    "batch_max_delay_ms",
    "retain_min_changes",
    "retain_min_age_ms",
    "token",
    "ca",
    "cert",
    "key",
    "on_promote",
    "on_demote",
    "on_fence",
    "timeout_ms",
    "address",
    "status",
];

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_]{1,12}",
    ]
}

fn arb_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (arb_key(), arb_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(SECTIONS).prop_map(|s| format!("[{s}]")),
        1 => Just("[[peers]]".to_string()),
        1 => "[a-z.]{1,12}".prop_map(|s| format!("[{s}]")),
        1 => ".{0,30}",
    ]
}

/// One edit to a valid config's text.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(Index),
    /// Duplicates a line, so a key or a table header appears twice.
    DuplicateLine(Index),
    /// Replaces the value of a `key = value` line (other lines unchanged).
    ReplaceValue(Index, String),
    InsertLine(Index, String),
    /// Random bytes (made UTF-8, as the file reader requires) at some offset.
    InsertBytes(Index, Vec<u8>),
    Truncate(Index),
    SwapLines(Index, Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (any::<Index>(), arb_value()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        (any::<Index>(), arb_line()).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::InsertBytes(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match m {
            Mutation::DeleteLine(i) => {
                lines.remove(i.index(n));
            }
            Mutation::DuplicateLine(i) => {
                let i = i.index(n);
                lines.insert(i, lines[i].clone());
            }
            Mutation::ReplaceValue(i, v) => {
                let i = i.index(n);
                if let Some((k, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{k}= {v}");
                }
            }
            Mutation::InsertLine(i, l) => lines.insert(i.index(n + 1), l.clone()),
            Mutation::InsertBytes(i, b) => {
                let mut joined = lines.join("\n").into_bytes();
                let at = i.index(joined.len() + 1);
                joined.splice(at..at, b.iter().copied());
                lines = String::from_utf8_lossy(&joined)
                    .lines()
                    .map(str::to_string)
                    .collect();
            }
            Mutation::Truncate(i) => {
                let joined = lines.join("\n");
                let mut at = i.index(joined.len() + 1);
                while !joined.is_char_boundary(at) {
                    at -= 1;
                }
                lines = joined[..at].lines().map(str::to_string).collect();
            }
            Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        }
    }
    lines.join("\n")
}

/// The names the config accepts as overrides, plus a few it must ignore or
/// refuse.
fn arb_env_name() -> impl Strategy<Value = String> {
    let top = [
        "CLUSTER",
        "MEMBER",
        "INITIAL_ACTIVE",
        "AUTO_FAILOVER",
        "WITNESS",
    ];
    let more = [
        "NO_FAILOVER",
        "PRIORITY",
        "DATABASE_URL",
        "REPLICATION_LISTEN",
    ];
    let repl = [
        "REPLICATION_HEARTBEAT_INTERVAL_MS",
        "REPLICATION_LEASE_TIMEOUT_MS",
        "REPLICATION_FAILOVER_TIMEOUT_MS",
        "REPLICATION_MAX_FAILOVER_LAG_CHANGES",
        "REPLICATION_BATCH_MAX_CHANGES",
        "REPLICATION_BATCH_MAX_BYTES",
        "REPLICATION_BATCH_MAX_DELAY_MS",
        "REPLICATION_RETAIN_MIN_CHANGES",
        "REPLICATION_RETAIN_MIN_AGE_MS",
    ];
    let rest = [
        "STATUS_LISTEN",
        "STATUS_TOKEN",
        "TLS_CA",
        "TLS_CERT",
        "TLS_KEY",
        "HOOKS_ON_PROMOTE",
        "HOOKS_ON_DEMOTE",
        "HOOKS_ON_FENCE",
        "HOOKS_TIMEOUT_MS",
    ];
    let known: Vec<String> = top
        .iter()
        .chain(&more)
        .chain(&repl)
        .chain(&rest)
        .map(|s| format!("UNDERSTUDY_{s}"))
        .collect();
    prop_oneof![
        4 => prop::sample::select(known),
        1 => "UNDERSTUDY_[A-Z_]{0,24}",
    ]
}

fn arb_env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("99999999999999999999999999".to_string()),
        Just(String::new()),
        Just("true".to_string()),
        Just("0".to_string()),
        Just("127.0.0.1:0".to_string()),
        Just("sqlite://x.db".to_string()),
        Just("postgres://u@127.0.0.1:1/db".to_string()),
        prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Without this the mutation suite would only ever see broken documents.
#[test]
fn the_example_config_parses() {
    let c = Config::parse(EXAMPLE, Path::new(CONFIG_PATH), &[]);
    assert!(c.is_ok(), "{:?}", c.err());
}

#[test]
fn deeply_nested_toml_is_an_error_not_a_crash() {
    for depth in [64, 1_000, 100_000] {
        for text in [
            format!("cluster = {}{}", "[".repeat(depth), "]".repeat(depth)),
            format!("cluster = {}1{}", "{a = ".repeat(depth), "}".repeat(depth)),
        ] {
            let r = Config::parse(&text, Path::new(CONFIG_PATH), &[]);
            match r {
                Ok(_) => panic!("a nested value was taken as a cluster name"),
                Err(e) => assert_eq!(e.file, CONFIG_PATH),
            }
        }
    }
}

/// The generators reach every stage of parsing: some mutated configs are
/// still valid, some break the TOML syntax, and some pass it only to be
/// refused by a key check. Without this a generator that only ever produced
/// syntax errors would pass the suite while testing little.
#[test]
fn the_config_generators_reach_every_stage() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(pt_config(1));
    let mutations = prop::collection::vec(arb_mutation(), 1..6);
    let env = prop::collection::vec((arb_env_name(), arb_env_value()), 1..8);
    let (mut ok, mut syntax, mut keyed) = (0, 0, 0);
    for i in 0..300 {
        let r = if i % 2 == 0 {
            let m = mutations.new_tree(&mut runner).unwrap().current();
            Config::parse(&mutate(EXAMPLE, &m), Path::new(CONFIG_PATH), &[])
        } else {
            let e = env.new_tree(&mut runner).unwrap().current();
            Config::parse(EXAMPLE, Path::new(CONFIG_PATH), &e)
        };
        match r {
            Ok(_) => ok += 1,
            Err(e) if e.key == "-" => syntax += 1,
            Err(_) => keyed += 1,
        }
    }
    eprintln!("valid {ok}, unkeyed errors {syntax}, keyed errors {keyed}");
    assert!(ok > 0 && syntax > 0 && keyed > 0);
}

proptest! {
    #![proptest_config(pt_config(400))]

    #[test]
    fn random_toml_documents_never_panic(lines in prop::collection::vec(arb_line(), 0..40)) {
        parse_checked(&lines.join("\n"), &[]);
    }

    #[test]
    fn random_text_never_panics(text in ".{0,400}") {
        parse_checked(&text, &[]);
    }

    #[test]
    fn mutated_example_configs_never_panic(
        mutations in prop::collection::vec(arb_mutation(), 1..6),
    ) {
        parse_checked(&mutate(EXAMPLE, &mutations), &[]);
    }

    #[test]
    fn random_env_overrides_never_panic(
        env in prop::collection::vec((arb_env_name(), arb_env_value()), 1..8),
    ) {
        parse_checked(EXAMPLE, &env);
    }

    #[test]
    fn env_overrides_on_a_mutated_config_never_panic(
        mutations in prop::collection::vec(arb_mutation(), 1..3),
        env in prop::collection::vec((arb_env_name(), arb_env_value()), 1..4),
    ) {
        parse_checked(&mutate(EXAMPLE, &mutations), &env);
    }
}

// ------------------------------------------------------------------ wire --

fn hello() -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        cluster: "prod".into(),
        member: MemberId::new("b"),
        role: Role::Passive,
        epoch: Epoch(3),
        position: Position::new(3, 41),
        want_snapshot: false,
        schema: None,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        epoch: Epoch(3),
        member: MemberId::new("a"),
        role: Role::Active,
        position: Position::new(3, 99),
        sent_at_ms: 1_700_000_000_000,
    }
}

fn batch() -> Batch {
    let cat = example_catalog();
    Batch {
        changes: vec![
            Change {
                pos: Position::new(3, 42),
                op: ChangeOp::Upsert(project(
                    &cat,
                    "ops",
                    Some("nightly jobs"),
                    Some("{\"a\":1}"),
                    1_700_000_000_000,
                )),
            },
            Change {
                pos: Position::new(3, 43),
                op: ChangeOp::Upsert(key(
                    &cat,
                    "keys/db",
                    "password",
                    b"hunter2",
                    None,
                    1_700_000_000_001,
                )),
            },
            Change {
                pos: Position::new(3, 44),
                op: del("jobs", "job-1"),
            },
        ],
        commit: true,
        head: Position::new(3, 44),
        sent_at_ms: 1_700_000_000_002,
    }
}

/// How many of [`valid_frames`] come first and are `ClientMsg`s; the rest
/// are `ServerMsg`s.
const CLIENT_FRAMES: usize = 3;

/// Valid frames of every message kind, each way.
fn valid_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let client = [
        ClientMsg::Hello(hello()),
        ClientMsg::Ack {
            applied: Position::new(3, 44),
        },
        ClientMsg::Heartbeat(heartbeat()),
    ];
    for m in &client {
        let mut f = Vec::new();
        encode_frame(m, &mut f).unwrap();
        out.push(f);
    }
    let server = [
        ServerMsg::Welcome(hello()),
        ServerMsg::Refuse {
            reason: "another cluster".into(),
        },
        ServerMsg::Batch(batch()),
        ServerMsg::Heartbeat(heartbeat()),
    ];
    for m in &server {
        let mut f = Vec::new();
        encode_frame(m, &mut f).unwrap();
        out.push(f);
    }
    out
}

fn header_len(buf: &[u8]) -> Option<u32> {
    buf.first_chunk::<HEADER_BYTES>()
        .map(|h| u32::from_be_bytes(*h))
}

/// What `decode_frame` must answer for `buf`, whatever its contents: wait
/// for more while the header or body is incomplete, refuse an oversized
/// header at once, and never claim more bytes than one frame.
fn check_decode<M: serde::de::DeserializeOwned>(buf: &[u8]) {
    let r = decode_frame::<M>(buf);
    let Some(len) = header_len(buf) else {
        assert!(
            matches!(r, Ok(None)),
            "incomplete header must wait for more"
        );
        return;
    };
    if len as usize > MAX_FRAME_BYTES {
        assert!(
            matches!(r, Err(WireError::Oversized { .. })),
            "header {len} over the limit must be Oversized"
        );
        return;
    }
    let frame_len = HEADER_BYTES + len as usize;
    match r {
        Ok(None) => assert!(buf.len() < frame_len, "a whole frame was left undecoded"),
        Ok(Some((_, used))) => assert_eq!(used, frame_len),
        Err(e) => {
            assert!(
                buf.len() >= frame_len,
                "an incomplete frame was judged: {e}"
            );
            assert!(
                e.is_malformed(),
                "garbage must be a malformed-frame error: {e}"
            );
        }
    }
}

/// A byte stream for `FrameReader` that hands out at most `chunk` bytes per
/// read, so frames arrive split at awkward places.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Read frames until the stream ends or fails; bounded, since every
/// successful frame consumes at least a header.
fn read_all<M: serde::de::DeserializeOwned>(
    rt: &tokio::runtime::Runtime,
    data: &[u8],
    chunk: usize,
) -> (usize, Option<WireError>) {
    rt.block_on(async {
        let mut r = FrameReader::<_, M>::new(Trickle {
            data,
            chunk: chunk.max(1),
        });
        let mut frames = 0;
        for _ in 0..=data.len() / HEADER_BYTES {
            match r.recv().await {
                Ok(Some(_)) => frames += 1,
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
        panic!("more frames than the input could hold");
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[derive(Clone, Debug)]
enum FrameMutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, Index),
    /// Rewrites the header with any length at all.
    SetLength(u32),
}

fn arb_frame_mutation() -> impl Strategy<Value = FrameMutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| FrameMutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| FrameMutation::SetByte(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| FrameMutation::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FrameMutation::Remove(a, b)),
        any::<u32>().prop_map(FrameMutation::SetLength),
    ]
}

fn mutate_frame(mut f: Vec<u8>, mutations: &[FrameMutation]) -> Vec<u8> {
    for m in mutations {
        let n = f.len();
        match m {
            FrameMutation::FlipBit(i, b) if n > 0 => f[i.index(n)] ^= 1 << b,
            FrameMutation::SetByte(i, v) if n > 0 => f[i.index(n)] = *v,
            FrameMutation::Insert(i, b) => {
                let at = i.index(n + 1);
                f.splice(at..at, b.iter().copied());
            }
            FrameMutation::Remove(a, b) if n > 0 => {
                let (a, b) = (a.index(n), b.index(n));
                f.drain(a.min(b)..=a.max(b));
            }
            FrameMutation::SetLength(len) if n >= HEADER_BYTES => {
                f[..HEADER_BYTES].copy_from_slice(&len.to_be_bytes())
            }
            _ => {}
        }
    }
    f
}

#[test]
fn valid_frames_decode_whole() {
    let rt = runtime();
    let frames = valid_frames();
    let (client, server) = frames.split_at(CLIENT_FRAMES);
    assert_eq!(read_all::<ClientMsg>(&rt, &client.concat(), 7).0, 3);
    let (n, err) = read_all::<ServerMsg>(&rt, &server.concat(), 5);
    assert_eq!(n, 4, "{err:?}");
    assert!(err.is_none());
}

proptest! {
    #![proptest_config(pt_config(600))]

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_decode::<ClientMsg>(&bytes);
        check_decode::<ServerMsg>(&bytes);
    }

    /// Random bodies behind a header that matches their length: the decoder
    /// must judge each one (a message or a malformed-frame error).
    #[test]
    fn random_bodies_with_honest_headers_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        check_decode::<ClientMsg>(&f);
        check_decode::<ServerMsg>(&f);
    }

    #[test]
    fn mutated_frames_never_panic(
        which in any::<Index>(),
        mutations in prop::collection::vec(arb_frame_mutation(), 1..4),
    ) {
        let frames = valid_frames();
        let f = mutate_frame(frames[which.index(frames.len())].clone(), &mutations);
        check_decode::<ClientMsg>(&f);
        check_decode::<ServerMsg>(&f);
    }

    /// A frame whose header claims less than its body holds a strict prefix
    /// of a valid message, which never decodes as a message of the same
    /// direction (decoding reads the same fields in the same order, so it
    /// needs every byte). A prefix may well be a valid message of the other
    /// direction, so only the frame's own type is asked.
    #[test]
    fn shortened_headers_are_malformed(which in any::<Index>(), cut in any::<Index>()) {
        let frames = valid_frames();
        let i = which.index(frames.len());
        let mut f = frames[i].clone();
        let body = f.len() - HEADER_BYTES;
        let short = cut.index(body) as u32;
        f[..HEADER_BYTES].copy_from_slice(&short.to_be_bytes());
        let r = if i < CLIENT_FRAMES {
            decode_frame::<ClientMsg>(&f).map(|o| o.is_some())
        } else {
            decode_frame::<ServerMsg>(&f).map(|o| o.is_some())
        };
        match r {
            Err(e) => prop_assert!(e.is_malformed(), "{e}"),
            Ok(got) => prop_assert!(!got, "a truncated body decoded as a message"),
        }
    }

    #[test]
    fn the_frame_reader_survives_garbage_after_valid_frames(
        n_valid in 0usize..4,
        garbage in prop::collection::vec(any::<u8>(), 0..256),
        chunk in 1usize..64,
    ) {
        let rt = runtime();
        let frames = valid_frames();
        let mut stream: Vec<u8> = frames[CLIENT_FRAMES..CLIENT_FRAMES + n_valid].concat();
        stream.extend_from_slice(&garbage);
        let (got, err) = read_all::<ServerMsg>(&rt, &stream, chunk);
        // Every valid frame in front arrives; what follows ends the stream,
        // cleanly or with an error, but never with a panic or a hang.
        prop_assert!(got >= n_valid, "only {got} of {n_valid} valid frames read ({err:?})");
        if garbage.is_empty() {
            prop_assert_eq!(got, n_valid);
            prop_assert!(err.is_none());
        }
    }

    #[test]
    fn the_frame_reader_never_panics_on_mutated_frames(
        which in any::<Index>(),
        mutations in prop::collection::vec(arb_frame_mutation(), 1..4),
        chunk in 1usize..64,
    ) {
        let rt = runtime();
        let frames = valid_frames();
        let f = mutate_frame(frames[which.index(frames.len())].clone(), &mutations);
        let _ = read_all::<ClientMsg>(&rt, &f, chunk);
        let _ = read_all::<ServerMsg>(&rt, &f, chunk);
    }

    /// Over the limit is refused from the 4 header bytes alone: the decoder
    /// does not wait for a body, and the reader never asks for one.
    #[test]
    fn oversized_headers_are_refused_before_any_body(
        len in (MAX_FRAME_BYTES as u32 + 1)..=u32::MAX,
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let header = len.to_be_bytes();
        let r = decode_frame::<ServerMsg>(&header);
        prop_assert!(matches!(r, Err(WireError::Oversized { .. })), "{r:?}");
        let mut with_tail = header.to_vec();
        with_tail.extend_from_slice(&tail);
        let r = decode_frame::<ClientMsg>(&with_tail);
        prop_assert!(matches!(r, Err(WireError::Oversized { .. })), "{r:?}");

        let rt = runtime();
        let r = rt.block_on(async {
            FrameReader::<_, ServerMsg>::new(HeaderOnly { header, sent: false }).recv().await
        });
        prop_assert!(matches!(r, Err(WireError::Oversized { len: l, .. }) if l == u64::from(len)), "{r:?}");
    }
}

/// A peer that sends a 4-byte header and then fails the test if it is read
/// again: proof that the reader judged the header without the body.
struct HeaderOnly {
    header: [u8; HEADER_BYTES],
    sent: bool,
}

impl AsyncRead for HeaderOnly {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        assert!(
            !self.sent,
            "the reader asked for the body of an oversized frame"
        );
        buf.put_slice(&self.header);
        self.sent = true;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn the_largest_allowed_header_waits_for_its_body() {
    let header = (MAX_FRAME_BYTES as u32).to_be_bytes();
    assert!(matches!(decode_frame::<ServerMsg>(&header), Ok(None)));
    let over = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    assert!(matches!(
        decode_frame::<ServerMsg>(&over),
        Err(WireError::Oversized { len, max }) if len == MAX_FRAME_BYTES as u64 + 1 && max == MAX_FRAME_BYTES
    ));
}
