//! Tests of the change renderings: secret columns never show, values take
//! their column's form, and images this member cannot describe show nothing.

use super::*;
use crate::model::Position;
use crate::store::conformance::{example_catalog, job, key, set, text};
use crate::tables::{ColumnDesc, TableName};

fn at(seq: u64, op: ChangeOp) -> Change {
    Change {
        pos: Position::new(1, seq),
        op,
    }
}

fn col(name: &str, ty: PortableType, secret: bool) -> ColumnDesc {
    ColumnDesc {
        name: name.into(),
        ty,
        declared: ty.as_str().into(),
        nullable: true,
        secret,
        ids: None,
    }
}

/// One table with a column of each dated type, a real, bytes and a secret
/// integer.
fn typed_catalog() -> Catalog {
    let t = TableDesc {
        name: TableName::new("events"),
        columns: vec![
            col("id", PortableType::Int, false),
            col("day", PortableType::Date, false),
            col("at", PortableType::Timestamp, false),
            col("at_tz", PortableType::TimestampTz, false),
            col("ratio", PortableType::Real, false),
            col("blob", PortableType::Bytes, false),
            col("pin", PortableType::Int, true),
        ],
        key: vec![0],
        foreign_keys: vec![],
    };
    Catalog::build(vec![t], &["events.pin".into()]).expect("catalog")
}

#[test]
fn secret_columns_are_redacted_in_both_forms() {
    let cat = example_catalog();
    let c = at(
        9,
        ChangeOp::Upsert(key(&cat, "keys/db", "password", b"s3cr3t-pw", None, 5)),
    );
    let j = change_json(&cat, &c).to_string();
    let l = change_line(&cat, &c);
    for out in [&j, &l] {
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(!out.contains(&hex::encode("s3cr3t")), "{out}");
        assert!(out.contains("<redacted 9 bytes>"), "{out}");
        assert!(out.contains("keys/db"), "{out}");
    }
    assert!(j.contains("\"seq\":9"), "{j}");
    assert!(j.contains("\"table\":\"keys\""), "{j}");
    assert!(
        l.contains("kind=password") && l.contains("meta=NULL"),
        "{l}"
    );
    let doc = render_log(&cat, &[c], true);
    let v: Json = serde_json::from_str(&doc).expect("one JSON document");
    assert_eq!(v[0]["row"]["content"], "<redacted 9 bytes>");
}

#[test]
fn secrets_show_only_when_included() {
    let cat = example_catalog();
    let k = key(&cat, "k", "private", b"hunter2", Some("{}"), 5);
    let shown = row_json(&cat, &k, Secrets::Include);
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"hunter2");
    assert_eq!(shown["content_base64"], b64.as_str());
    assert_eq!(shown["meta"], "{}");
    let hidden = row_json(&cat, &k, Secrets::Redact).to_string();
    assert!(
        !hidden.contains(&b64) && !hidden.contains("hunter2"),
        "{hidden}"
    );
}

#[test]
fn lines_show_the_other_columns_as_pairs() {
    let cat = example_catalog();
    let mut j = job(&cat, "j1", "p1", "nightly backup", 1001);
    set(&cat, &mut j, "owner_member", text("a"));
    let l = change_line(&cat, &at(3, ChangeOp::Upsert(j)));
    assert!(
        l.contains("jobs") && l.contains("upsert") && l.contains(" j1 "),
        "{l}"
    );
    assert!(l.contains("project=p1"), "{l}");
    assert!(l.contains("name=\"nightly backup\""), "{l}");
    assert!(l.contains("schedule_enabled=true"), "{l}");
    assert!(
        l.contains("owner_member=a") && l.contains("updated_at=1001"),
        "{l}"
    );
    assert!(!l.contains("id=j1"), "the key is shown once: {l}");
    let d = change_line(&cat, &at(4, crate::store::conformance::del("jobs", "j1")));
    assert!(d.ends_with("jobs     delete j1"), "{d:?}");
}

#[test]
fn values_take_their_columns_forms() {
    let cat = typed_catalog();
    let img = RowImage::new(
        TableName::new("events"),
        1,
        vec![
            Value::Int(1),
            Value::Int(19_723),
            Value::Int(1_704_164_645_500_000),
            Value::Int(0),
            Value::Real(f64::NAN),
            Value::Bytes(vec![0xde, 0xad]),
            Value::Int(4242),
        ],
    );
    let j = row_json(&cat, &img, Secrets::Redact);
    assert_eq!(j["day"], "2024-01-01");
    assert_eq!(j["at"], "2024-01-02 03:04:05.5");
    assert_eq!(j["at_tz"], "1970-01-01 00:00:00+00:00");
    assert_eq!(j["ratio"], "NaN");
    assert_eq!(j["blob_base64"], "3q0=");
    assert_eq!(j["pin"], "<redacted>");
    let l = change_line(&cat, &at(1, ChangeOp::Upsert(img)));
    assert!(l.contains("day=2024-01-01"), "{l}");
    assert!(l.contains("at=\"2024-01-02 03:04:05.5\""), "{l}");
    assert!(
        l.contains("blob=0xdead") && l.contains("pin=<redacted>"),
        "{l}"
    );
    assert!(!l.contains("4242"), "{l}");
}

#[test]
fn images_of_another_shape_show_no_values() {
    let cat = example_catalog();
    let odd = RowImage::new(
        TableName::new("elsewhere"),
        1,
        vec![text("k"), text("hunter2")],
    );
    let mut short = key(&cat, "k", "password", b"hunter2", None, 1);
    short.values.pop();
    for img in [odd, short] {
        let l = change_line(&cat, &at(1, ChangeOp::Upsert(img.clone())));
        let j = row_json(&cat, &img, Secrets::Redact).to_string();
        for out in [&l, &j] {
            assert!(!out.contains("hunter2"), "{out}");
            assert!(!out.contains(&hex::encode("hunter2")), "{out}");
            assert!(out.contains("does not capture table"), "{out}");
        }
    }
}
