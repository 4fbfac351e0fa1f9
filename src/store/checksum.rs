//! Backend-independent table checksums.
//!
//! Owns: the canonical encoding of a row for hashing, and the order-free
//! accumulation (a sum of per-row digests), so SQLite and PostgreSQL agree
//! whatever their collation or scan order.
//! Must never: expose row content (only digests leave this module).

use crate::model::RowImage;
use sha2::{Digest, Sha256};

/// Accumulates one table's checksum. Order-independent: rows may be fed in
/// any order (no `ORDER BY` over a million rows, no collation differences).
#[derive(Default, Clone, Debug)]
pub struct TableHasher {
    rows: u64,
    sum: u128,
}

impl TableHasher {
    pub fn add(&mut self, row: &RowImage) {
        let mut h = Sha256::new();
        encode(row, &mut h);
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.rows += 1;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Hex digest: row count and the digest sum.
    pub fn digest(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// The row's table, key width and every value, each tagged and
/// length-prefixed (see [`crate::tables::Value::hash_into`]).
fn encode(row: &RowImage, h: &mut Sha256) {
    h.update((row.table.as_str().len() as u64).to_le_bytes());
    h.update(row.table.as_str().as_bytes());
    h.update(row.key_len.to_le_bytes());
    for v in &row.values {
        v.hash_into(&mut |b| h.update(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{TableName, Value};

    fn p(name: &str, d: Option<&str>) -> RowImage {
        RowImage::new(
            TableName::new("projects"),
            1,
            vec![
                Value::Text(name.into()),
                d.map_or(Value::Null, |d| Value::Text(d.into())),
                Value::Null,
                Value::Int(1),
            ],
        )
    }

    #[test]
    fn order_free_and_content_sensitive() {
        let mut a = TableHasher::default();
        a.add(&p("x", None));
        a.add(&p("y", Some("d")));
        let mut b = TableHasher::default();
        b.add(&p("y", Some("d")));
        b.add(&p("x", None));
        assert_eq!(a.digest(), b.digest());
        let mut c = TableHasher::default();
        c.add(&p("y", Some("e")));
        c.add(&p("x", None));
        assert_ne!(a.digest(), c.digest());
        // NULL and empty differ.
        let mut n = TableHasher::default();
        n.add(&p("x", None));
        let mut e = TableHasher::default();
        e.add(&p("x", Some("")));
        assert_ne!(n.digest(), e.digest());
    }
}
