//! How a row image lives in PostgreSQL: the change-log row format shared by
//! `us_capture`, `us_changelog` and `us_divergence`, the SQL expressions
//! that turn a column into its portable value and back, and the checks a
//! change must pass before it is written.
//!
//! Owns: [`Carrier`] (which array of a log row a column's values travel
//! in), [`Tables`] (the catalog with each table's carrier layout and quoted
//! names, shared by capture, apply, snapshots and the quarantine), decoding
//! of log rows and table rows into [`Value`]s, the validation of incoming
//! changes ([`Tables::check`]), and [`LogEntry`], the binary form of a log
//! row as a `us_change` composite.
//! Must never: put a value into an error or a log line (name table and
//! column only: any column may be secret), or let a value of one carrier
//! slip into another's array.
//!
//! The log row format, `(seq, epoch, tbl, op, i, r, b, t, x)`: every image
//! value goes to the array of its column's carrier (`i int8[]` for
//! integers, dates and timestamps, `r float8[]`, `b bool[]`, `t text[]`
//! for text, numeric, json and uuid, `x bytea[]`), in image-layout order
//! within each array, NULL elements for NULL values; a carrier no column
//! uses is NULL. A delete holds only the key. The layout of a table tells
//! which array and index each column lives at, so the agent could write the
//! same rows itself (as logical decoding will).

use super::catalog::{quote_ident, sql_table};
use crate::model::{Change, ChangeOp, Position, RowImage, SchemaChange};
use crate::tables::{Catalog, PortableType, TableDesc, TableId, TableName, Value, canonical};
use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use tokio_postgres::Row;
use tokio_postgres::types::private::BytesMut;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

/// Change-log `op` of an upsert (the full image after the change).
pub(super) const OP_UPSERT: i16 = 1;
/// Change-log `op` of a delete (the key only).
pub(super) const OP_DELETE: i16 = 2;
/// Change-log `op` of a schema change (`understudy migrate`): `tbl` empty,
/// `i = [version]`, `t = [SQLite DDL, PostgreSQL DDL, fingerprint]`.
pub(super) const OP_SCHEMA: i16 = 3;

/// The image columns of a log row, after `seq`/`id` and `epoch`.
pub(super) const LOG_COLS: &str = "tbl, op, i, r, b, t, x";

/// The array of a log row a column's values travel in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Carrier {
    I,
    R,
    B,
    T,
    X,
}

impl Carrier {
    pub(super) const ALL: [Carrier; 5] =
        [Carrier::I, Carrier::R, Carrier::B, Carrier::T, Carrier::X];

    pub(super) fn of(ty: PortableType) -> Carrier {
        match ty {
            PortableType::Int
            | PortableType::Date
            | PortableType::Timestamp
            | PortableType::TimestampTz => Carrier::I,
            PortableType::Real => Carrier::R,
            PortableType::Bool => Carrier::B,
            PortableType::Numeric
            | PortableType::Text
            | PortableType::Json
            | PortableType::Uuid => Carrier::T,
            PortableType::Bytes => Carrier::X,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }

    /// The SQL array type of parameters of this carrier.
    pub(super) fn array_type(self) -> &'static str {
        match self {
            Carrier::I => "int8[]",
            Carrier::R => "float8[]",
            Carrier::B => "bool[]",
            Carrier::T => "text[]",
            Carrier::X => "bytea[]",
        }
    }
}

/// One image value's place: its column and where it travels.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) column: String,
    pub(super) ty: PortableType,
    pub(super) declared: String,
    pub(super) carrier: Carrier,
    /// Index within its carrier's array.
    pub(super) index: usize,
}

impl Slot {
    /// The column (of `prefix`, e.g. `NEW`) as its carrier's value: what
    /// capture triggers store and snapshots read. Session-independent:
    /// `extract(epoch ...)` of a timestamp is its nominal seconds, of a
    /// timestamptz the seconds since the Unix epoch, whatever `TimeZone`
    /// says; exact (numeric) on PostgreSQL 14 and later.
    pub(super) fn capture_expr(&self, prefix: &str) -> String {
        let c = if prefix.is_empty() {
            quote_ident(&self.column)
        } else {
            format!("{prefix}.{}", quote_ident(&self.column))
        };
        match self.ty {
            PortableType::Int => format!("{c}::int8"),
            PortableType::Real => format!("{c}::float8"),
            PortableType::Bool | PortableType::Bytes => c,
            PortableType::Numeric
            | PortableType::Text
            | PortableType::Json
            | PortableType::Uuid => {
                format!("{c}::text")
            }
            PortableType::Date => format!("({c} - date '1970-01-01')::int8"),
            PortableType::Timestamp | PortableType::TimestampTz => {
                format!("(extract(epoch from {c}) * 1000000)::int8")
            }
        }
    }

    /// A carrier value `v` (SQL expression) as the column's type: the
    /// inverse of [`Slot::capture_expr`]. Text stays text, so assigning it
    /// to a `varchar(n)` refuses what is too long instead of cutting it as
    /// an explicit cast would. Timestamps add whole days and then the
    /// microseconds of the day: `interval * n` multiplies in floating
    /// point, exact only below 2^53 µs (years 1685 to 2255), and days are
    /// whole numbers; `AT TIME ZONE 'UTC'` reads the result as UTC without
    /// the session's time zone.
    pub(super) fn cast_expr(&self, v: &str) -> String {
        const DAY: &str = "86400000000";
        let stamp = || {
            format!(
                "(timestamp '1970-01-01' + ({v} / {DAY}) * interval '1 day' \
                 + ({v} % {DAY}) * interval '1 microsecond')"
            )
        };
        match self.ty {
            PortableType::Int
            | PortableType::Real
            | PortableType::Numeric
            | PortableType::Json
            | PortableType::Uuid => format!("{v}::{}", self.declared),
            PortableType::Text | PortableType::Bool | PortableType::Bytes => v.to_string(),
            PortableType::Date => format!("(date '1970-01-01' + {v}::int4)"),
            PortableType::Timestamp => stamp(),
            PortableType::TimestampTz => format!("({} AT TIME ZONE 'UTC')", stamp()),
        }
    }

    /// Whether `v` is a value of this column's portable type (NULL is,
    /// the database enforces NOT NULL). Numeric and uuid text is parsed:
    /// PostgreSQL's own refusal would quote the value.
    fn fits(&self, v: &Value) -> Result<(), String> {
        let ok = match (v, self.ty) {
            (Value::Null, _) => true,
            (
                Value::Int(_),
                PortableType::Int
                | PortableType::Date
                | PortableType::Timestamp
                | PortableType::TimestampTz,
            ) => true,
            (Value::Real(_), PortableType::Real) | (Value::Bool(_), PortableType::Bool) => true,
            (Value::Bytes(_), PortableType::Bytes) => true,
            (Value::Text(_), PortableType::Text | PortableType::Json) => true,
            (Value::Text(s), PortableType::Numeric) => {
                return canonical::numeric(s)
                    .map(|_| ())
                    .map_err(|why| format!("holds text that is not a valid numeric ({why})"));
            }
            (Value::Text(s), PortableType::Uuid) => {
                return canonical::uuid(s)
                    .map(|_| ())
                    .map_err(|why| format!("holds text that is not a valid uuid ({why})"));
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("is {} but the value is {}", self.ty, v.kind()))
        }
    }
}

/// One captured table as the PostgreSQL backend handles it.
#[derive(Clone, Debug)]
pub(super) struct TableCodec {
    pub(super) id: TableId,
    pub(super) name: TableName,
    /// Schema-qualified and quoted.
    pub(super) sql_name: String,
    pub(super) key_len: usize,
    /// In image order.
    pub(super) slots: Vec<Slot>,
    /// How many values of each carrier a full image has, and a key.
    full: [usize; 5],
    key: [usize; 5],
    /// Some foreign key (of any table, this one included) references this
    /// table: a delete here may cascade, set NULL or be refused while a
    /// child row points at it, so it does not commute with the changes
    /// around it (see `batch`).
    pub(super) has_children: bool,
    /// Some column takes generated ids (a sequence or an identity).
    pub(super) has_ids: bool,
}

impl TableCodec {
    fn new(id: TableId, t: &TableDesc, catalog: &Catalog) -> TableCodec {
        let mut full = [0usize; 5];
        let mut key = [0usize; 5];
        let mut slots = Vec::with_capacity(t.columns.len());
        for (k, c) in t.image_columns().into_iter().enumerate() {
            let carrier = Carrier::of(c.ty);
            slots.push(Slot {
                column: c.name.clone(),
                ty: c.ty,
                declared: c.declared.clone(),
                carrier,
                index: full[carrier.slot()],
            });
            full[carrier.slot()] += 1;
            if k < t.key_len() {
                key[carrier.slot()] += 1;
            }
        }
        let has_children = catalog
            .tables()
            .iter()
            .any(|o| o.foreign_keys.iter().any(|fk| fk.parent == t.name));
        TableCodec {
            id,
            name: t.name.clone(),
            sql_name: sql_table(&t.name),
            key_len: t.key_len(),
            slots,
            full,
            key,
            has_children,
            has_ids: t.columns.iter().any(|c| c.ids.is_some()),
        }
    }

    /// The key's slots.
    pub(super) fn key_slots(&self) -> &[Slot] {
        &self.slots[..self.key_len]
    }

    /// How many values of `carrier` an image (`key_only`: a key) holds.
    pub(super) fn count(&self, carrier: Carrier, key_only: bool) -> usize {
        if key_only {
            self.key[carrier.slot()]
        } else {
            self.full[carrier.slot()]
        }
    }

    /// The select list that reads this table's rows as image values, in
    /// image order (snapshots; checksums read through them).
    pub(super) fn select_list(&self) -> String {
        let cols: Vec<String> = self.slots.iter().map(|s| s.capture_expr("")).collect();
        cols.join(", ")
    }

    /// A table row read through [`TableCodec::select_list`] (from column
    /// `base` on) as its image.
    pub(super) fn image_of_row(&self, r: &Row, base: usize) -> Result<RowImage, String> {
        let mut values = Vec::with_capacity(self.slots.len());
        for (k, s) in self.slots.iter().enumerate() {
            let at = base + k;
            let err = |e: tokio_postgres::Error| format!("{}.{}: {e}", self.name, s.column);
            let v = match s.carrier {
                Carrier::I => r
                    .try_get::<_, Option<i64>>(at)
                    .map_err(err)?
                    .map(Value::Int),
                Carrier::R => r
                    .try_get::<_, Option<f64>>(at)
                    .map_err(err)?
                    .map(Value::Real),
                Carrier::B => r
                    .try_get::<_, Option<bool>>(at)
                    .map_err(err)?
                    .map(Value::Bool),
                Carrier::X => r
                    .try_get::<_, Option<Vec<u8>>>(at)
                    .map_err(err)?
                    .map(Value::Bytes),
                Carrier::T => match r.try_get::<_, Option<String>>(at).map_err(err)? {
                    Some(t) => Some(self.text_value(s, t)?),
                    None => None,
                },
            };
            values.push(v.unwrap_or(Value::Null));
        }
        Ok(RowImage::new(self.name.clone(), self.key_len, values))
    }

    /// Text as PostgreSQL printed it, as the portable value: numeric in
    /// canonical form (`numeric(10,2)` prints `1.50`, the value is `1.5`).
    fn text_value(&self, s: &Slot, text: String) -> Result<Value, String> {
        if s.ty != PortableType::Numeric {
            return Ok(Value::Text(text));
        }
        canonical::numeric(&text).map(Value::Text).map_err(|why| {
            format!(
                "{}.{} holds a numeric the agent cannot read: {why}",
                self.name, s.column
            )
        })
    }

    /// The values of a log row's arrays, `key_only` for a delete. Each
    /// array must hold exactly what the layout says.
    fn values_of(&self, mut a: Arrays, key_only: bool) -> Result<Vec<Value>, String> {
        for c in Carrier::ALL {
            let (have, want) = (a.len(c), self.count(c, key_only));
            if have != want {
                return Err(format!(
                    "its {c:?} array holds {have} values where {} has {want} (the log was written for another shape of the table)",
                    self.name
                ));
            }
        }
        let n = if key_only {
            self.key_len
        } else {
            self.slots.len()
        };
        let mut values = Vec::with_capacity(n);
        for s in &self.slots[..n] {
            let v = match s.carrier {
                Carrier::I => a.i[s.index].map(Value::Int),
                Carrier::R => a.r[s.index].map(Value::Real),
                Carrier::B => a.b[s.index].map(Value::Bool),
                Carrier::X => a.x[s.index].take().map(Value::Bytes),
                Carrier::T => match a.t[s.index].take() {
                    Some(t) => Some(self.text_value(s, t)?),
                    None => None,
                },
            };
            values.push(v.unwrap_or(Value::Null));
        }
        Ok(values)
    }
}

/// What a checked image belongs to, for messages.
#[derive(Clone, Copy)]
enum Subject {
    Change(Position),
    Snapshot,
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Change(p) => write!(f, "change {p}"),
            Subject::Snapshot => f.write_str("a snapshot row"),
        }
    }
}

/// The five arrays of a log row.
#[derive(Default)]
struct Arrays {
    i: Vec<Option<i64>>,
    r: Vec<Option<f64>>,
    b: Vec<Option<bool>>,
    t: Vec<Option<String>>,
    x: Vec<Option<Vec<u8>>>,
}

impl Arrays {
    fn len(&self, c: Carrier) -> usize {
        match c {
            Carrier::I => self.i.len(),
            Carrier::R => self.r.len(),
            Carrier::B => self.b.len(),
            Carrier::T => self.t.len(),
            Carrier::X => self.x.len(),
        }
    }
}

/// The catalog with the backend's view of each table (indexed by
/// [`TableId`]). Shared (`Arc`) by everything that reads or writes rows;
/// replaced as a whole when `init` or `check_schema` read the catalog
/// again.
#[derive(Debug)]
pub(crate) struct Tables {
    pub(super) catalog: Arc<Catalog>,
    pub(super) codecs: Vec<TableCodec>,
    by_name: HashMap<TableName, usize>,
}

impl Tables {
    pub(super) fn new(catalog: Catalog) -> Tables {
        let codecs: Vec<TableCodec> = catalog
            .tables()
            .iter()
            .enumerate()
            .map(|(i, t)| TableCodec::new(TableId(i), t, &catalog))
            .collect();
        let by_name = codecs.iter().map(|c| (c.name.clone(), c.id.0)).collect();
        Tables {
            catalog: Arc::new(catalog),
            codecs,
            by_name,
        }
    }

    pub(super) fn get(&self, name: &TableName) -> Option<&TableCodec> {
        self.by_name.get(name).map(|&i| &self.codecs[i])
    }

    /// Check a change against the catalog before anything is written:
    /// its table is captured, the image has the table's width and key
    /// width, each value fits its column. The message names the change,
    /// table and column, never a value.
    pub(super) fn check(&self, ch: &Change) -> Result<&TableCodec, String> {
        let what = Subject::Change(ch.pos);
        match &ch.op {
            ChangeOp::Upsert(r) => {
                self.check_values(what, &r.table, &r.values, r.key_len as usize, true)
            }
            ChangeOp::Delete { table, key } => {
                self.check_values(what, table, key, key.len(), false)
            }
            ChangeOp::Schema(s) => Err(format!(
                "change {}: schema version {} is applied in a transaction of its own, not with rows",
                ch.pos, s.version
            )),
        }
    }

    /// [`Tables::check`] for a snapshot row.
    pub(super) fn check_image(&self, r: &RowImage) -> Result<&TableCodec, String> {
        self.check_values(
            Subject::Snapshot,
            &r.table,
            &r.values,
            r.key_len as usize,
            true,
        )
    }

    fn check_values(
        &self,
        what: Subject,
        table: &TableName,
        values: &[Value],
        key_len: usize,
        full: bool,
    ) -> Result<&TableCodec, String> {
        let codec = self.get(table).ok_or_else(|| {
            format!(
                "{what} is of table {table}, which this member does not capture: \
                 the members' [capture] tables differ; make them the same everywhere"
            )
        })?;
        if full && values.len() != codec.slots.len() {
            return Err(format!(
                "{what} of {table} has {} values where the table has {} columns: \
                 the members' tables differ; compare their columns",
                values.len(),
                codec.slots.len()
            ));
        }
        if key_len != codec.key_len || values.len() < key_len {
            return Err(format!(
                "{what} of {table} has a key of {key_len} columns where the table's primary key has {}: \
                 the members' tables differ; compare their primary keys",
                codec.key_len
            ));
        }
        for (k, (v, s)) in values.iter().zip(&codec.slots).enumerate() {
            if k < key_len && v.is_null() {
                return Err(format!(
                    "{what}: {table}.{} is part of the primary key but is NULL",
                    s.column
                ));
            }
            s.fits(v)
                .map_err(|why| format!("{what}: {table}.{} {why}", s.column))?;
        }
        Ok(codec)
    }

    /// A log row (columns `seq, epoch, tbl, op, i, r, b, t, x` from
    /// `base` on) as a change.
    pub(super) fn decode_change(&self, r: &Row, base: usize) -> Result<Change, String> {
        let g = |e: tokio_postgres::Error| format!("a change-log row: {e}");
        let seq: i64 = r.try_get(base).map_err(g)?;
        let epoch: i64 = r.try_get(base + 1).map_err(g)?;
        let pos = Position::new(
            u64::try_from(epoch).map_err(|_| format!("a change-log row has epoch {epoch}"))?,
            u64::try_from(seq).map_err(|_| format!("a change-log row has seq {seq}"))?,
        );
        let g = |e: tokio_postgres::Error| format!("change {pos}: {e}");
        let tbl: String = r.try_get(base + 2).map_err(g)?;
        let op: i16 = r.try_get(base + 3).map_err(g)?;
        let arrays = Arrays {
            i: r.try_get::<_, Option<_>>(base + 4)
                .map_err(g)?
                .unwrap_or_default(),
            r: r.try_get::<_, Option<_>>(base + 5)
                .map_err(g)?
                .unwrap_or_default(),
            b: r.try_get::<_, Option<_>>(base + 6)
                .map_err(g)?
                .unwrap_or_default(),
            t: r.try_get::<_, Option<_>>(base + 7)
                .map_err(g)?
                .unwrap_or_default(),
            x: r.try_get::<_, Option<_>>(base + 8)
                .map_err(g)?
                .unwrap_or_default(),
        };
        if op == OP_SCHEMA {
            return schema_change(pos, arrays);
        }
        let table = TableName::new(tbl);
        let codec = self.get(&table).ok_or_else(|| {
            format!(
                "change {pos} is of table {table}, which is not captured (any more): \
                 list it in [capture] tables again to read it"
            )
        })?;
        let op = match op {
            OP_UPSERT => ChangeOp::Upsert(RowImage::new(
                table,
                codec.key_len,
                codec
                    .values_of(arrays, false)
                    .map_err(|w| format!("change {pos}: {w}"))?,
            )),
            OP_DELETE => ChangeOp::Delete {
                key: codec
                    .values_of(arrays, true)
                    .map_err(|w| format!("change {pos}: {w}"))?,
                table,
            },
            other => return Err(format!("change {pos}: unknown op {other}")),
        };
        Ok(Change { pos, op })
    }
}

/// A schema-change log row's arrays (see [`OP_SCHEMA`]) as the change.
fn schema_change(pos: Position, a: Arrays) -> Result<Change, String> {
    let bad = || format!("change {pos}: a schema-change entry without its version and DDL");
    let version = match a.i.as_slice() {
        [Some(v)] => u64::try_from(*v).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let mut t = a.t.into_iter();
    let (Some(Some(sqlite)), Some(Some(postgres)), Some(Some(fingerprint)), None) =
        (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(bad());
    };
    Ok(Change {
        pos,
        op: ChangeOp::Schema(SchemaChange {
            version,
            sqlite,
            postgres,
            fingerprint,
        }),
    })
}

/// One log row in the binary form of the `us_change` composite, so a
/// whole batch's rows go to the server as ONE array parameter
/// (`unnest($1::us_change[])`): per-column arrays cannot carry them, the
/// rows' own arrays differ in length. `Debug` shows no value.
pub(super) struct LogEntry<'a> {
    pub(super) seq: i64,
    pub(super) epoch: i64,
    pub(super) tbl: &'a str,
    pub(super) op: i16,
    pub(super) i: Vec<Option<i64>>,
    pub(super) r: Vec<Option<f64>>,
    pub(super) b: Vec<Option<bool>>,
    pub(super) t: Vec<Option<&'a str>>,
    pub(super) x: Vec<Option<&'a [u8]>>,
    /// Which carriers the table has at all (the others are NULL, as the
    /// capture triggers write them).
    used: [bool; 5],
}

impl std::fmt::Debug for LogEntry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEntry")
            .field("seq", &self.seq)
            .field("tbl", &self.tbl)
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

impl<'a> LogEntry<'a> {
    /// The log row of a change that passed [`Tables::check`] (positions
    /// range-checked by the caller).
    pub(super) fn of(codec: &TableCodec, ch: &'a Change) -> Result<LogEntry<'a>, String> {
        let (op, values) = match &ch.op {
            ChangeOp::Upsert(r) => (OP_UPSERT, &r.values[..]),
            ChangeOp::Delete { key, .. } => (OP_DELETE, &key[..]),
            ChangeOp::Schema(_) => return Err("a schema change has no row to log".into()),
        };
        let key_only = op == OP_DELETE;
        let mut e = LogEntry {
            seq: i64::try_from(ch.pos.seq)
                .map_err(|_| format!("seq {} is out of range", ch.pos.seq))?,
            epoch: i64::try_from(ch.pos.epoch)
                .map_err(|_| format!("epoch {} is out of range", ch.pos.epoch))?,
            tbl: ch.table_str(),
            op,
            i: Vec::with_capacity(codec.count(Carrier::I, key_only)),
            r: Vec::with_capacity(codec.count(Carrier::R, key_only)),
            b: Vec::with_capacity(codec.count(Carrier::B, key_only)),
            t: Vec::with_capacity(codec.count(Carrier::T, key_only)),
            x: Vec::with_capacity(codec.count(Carrier::X, key_only)),
            used: Carrier::ALL.map(|c| codec.count(c, key_only) > 0),
        };
        // Image order within each carrier is the slots' order.
        for (v, s) in values.iter().zip(&codec.slots) {
            let mismatch = || format!("{}.{} does not hold a {} value", codec.name, s.column, s.ty);
            match (s.carrier, v) {
                (Carrier::I, Value::Int(n)) => e.i.push(Some(*n)),
                (Carrier::I, Value::Null) => e.i.push(None),
                (Carrier::R, Value::Real(f)) => e.r.push(Some(*f)),
                (Carrier::R, Value::Null) => e.r.push(None),
                (Carrier::B, Value::Bool(b)) => e.b.push(Some(*b)),
                (Carrier::B, Value::Null) => e.b.push(None),
                (Carrier::T, Value::Text(t)) => e.t.push(Some(t)),
                (Carrier::T, Value::Null) => e.t.push(None),
                (Carrier::X, Value::Bytes(x)) => e.x.push(Some(x)),
                (Carrier::X, Value::Null) => e.x.push(None),
                _ => return Err(mismatch()),
            }
        }
        Ok(e)
    }

    fn field(
        &self,
        name: &str,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let used = |c: Carrier| self.used[c.slot()];
        match name {
            "seq" => self.seq.to_sql(ty, out),
            "epoch" => self.epoch.to_sql(ty, out),
            "tbl" => self.tbl.to_sql(ty, out),
            "op" => self.op.to_sql(ty, out),
            "i" if used(Carrier::I) => self.i.to_sql(ty, out),
            "r" if used(Carrier::R) => self.r.to_sql(ty, out),
            "b" if used(Carrier::B) => self.b.to_sql(ty, out),
            "t" if used(Carrier::T) => self.t.to_sql(ty, out),
            "x" if used(Carrier::X) => self.x.to_sql(ty, out),
            "i" | "r" | "b" | "t" | "x" => Ok(IsNull::Yes),
            other => Err(format!(
                "the us_change type has a field {other} this agent does not know"
            )
            .into()),
        }
    }
}

impl ToSql for LogEntry<'_> {
    /// A record's binary form: the field count, then per field its type's
    /// oid, its length (-1 for NULL) and its bytes.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let Kind::Composite(fields) = ty.kind() else {
            return Err(format!("us_change is expected to be a composite type, not {ty}").into());
        };
        out.extend_from_slice(&i32::try_from(fields.len())?.to_be_bytes());
        for f in fields {
            out.extend_from_slice(&f.type_().oid().to_be_bytes());
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            let len = match self.field(f.name(), f.type_(), out)? {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(out.len() - at - 4)?,
            };
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "us_change" && matches!(ty.kind(), Kind::Composite(_))
    }

    to_sql_checked!();
}
